"""A study's Optuna record as the tests read it, and the views checked against it.

`read_record` is the only place in the tests that reads the record's user attributes: when
hpo changes how it stores a trial in Optuna, adapt it here and nowhere else. It reads through
hpo.record (whose docstring is the schema): each trial's kind, config, status and per-epoch
reports; the value of a COMPLETE trial is Optuna's `values[0]`.

    record = read_record(folder)                     # results/<study>/study.db
    record = read_record(folder, storage=url)        # the --storage the study used
    problems = disagreements(record, folder)         # [] when record and views agree
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

METRIC = "val_acc"  # the primary metric of the spaces these tests search
ENDED = {"completed", "stopped", "failed", "infeasible", "diverged", "oom"}


def read_record(folder: Path, storage: str | None = None) -> list[dict[str, Any]]:
    """Every trial of the study in `folder`'s Optuna record, by number: a dict of
        number   the trial's number, its leaderboard trial_id
        real     True for a trial hpo ran (or runs); False for a draw that never became one,
                 or what a driver left half-made
        state    Optuna's state: RUNNING, COMPLETE, PRUNED, FAIL, WAITING
        status   the leaderboard's word for it: completed, stopped, failed, ..., and
                 "running" while the record holds it unfinished
        epochs   {epoch: value of the primary metric}
        value    its best value: Optuna's value when COMPLETE, else the best of its epochs
                 (None when it has none)
        config   the complete config it trained (None for a draw that never became one)
    `storage` is the Optuna storage URL; None reads results/<study>/study.db, which must
    exist (Optuna would create an empty one)."""
    from hpo.record import TRIAL, Record

    if storage is None:
        db = Path(folder) / "study.db"
        if not db.is_file():
            raise FileNotFoundError(f"{db}: no Optuna record here")
        storage = f"sqlite:///{db.resolve()}"
    record = Record.load(storage, Path(folder).name)
    try:
        maximise = record.study.direction.name == "MAXIMIZE"
        trials = []
        for t in record.trials.values():
            real = t.kind == TRIAL and bool(t.config)
            epochs = {int(e["epoch"]): float(e[METRIC]) for e in t.epochs
                      if e.get(METRIC) is not None}
            finite = [v for v in epochs.values() if math.isfinite(v)]
            if t.state.name == "COMPLETE" and t.values:
                value = float(t.values[0])
            else:
                value = (max(finite) if maximise else min(finite)) if finite else None
            status = "running" if t.state.name == "RUNNING" else (t.status and str(t.status))
            trials.append({"number": t.number, "real": real, "state": t.state.name,
                           "status": status, "epochs": epochs, "value": value,
                           "config": t.config or None})
        return sorted(trials, key=lambda t: t["number"])
    finally:
        record.close()  # a test may stop the database server next


def read_views(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(leaderboard.csv, epochs.csv) of a study folder, trial ids as strings; empty frames
    where a file is not written yet."""
    folder = Path(folder)
    frames = []
    for name in ("leaderboard.csv", "epochs.csv"):
        path = folder / name
        frames.append(pd.read_csv(path, dtype={"trial_id": str}) if path.is_file()
                      else pd.DataFrame(columns=["trial_id", "status", "epoch"]))
    return frames[0], frames[1]


def disagreements(record: list[dict[str, Any]], folder: Path,
                  metric: str = METRIC) -> list[str]:
    """Where the views of `folder` (leaderboard.csv, epochs.csv) and the record differ, one
    line each: [] when every real trial of the record has exactly one leaderboard row with
    the same status and best value, its epochs in epochs.csv with the same values, and the
    views hold nothing else."""
    board, epochs = read_views(folder)
    problems = []
    real = {str(t["number"]): t for t in record if t["real"]}
    ids = list(board.trial_id)
    repeated = sorted({i for i in ids if ids.count(i) > 1}, key=int)
    if repeated:
        problems.append(f"leaderboard rows repeated: {repeated}")
    if set(ids) != set(real):
        problems.append(f"leaderboard trials {sorted(set(ids) - set(real), key=int)} are not "
                        f"in the record; record trials {sorted(set(real) - set(ids), key=int)} "
                        "have no row")
    strays = set(epochs.trial_id) - set(real)
    if strays:
        problems.append(f"epochs.csv has epochs of trials the record lacks: {sorted(strays)}")
    rows = board.drop_duplicates("trial_id").set_index("trial_id")
    for tid, trial in real.items():
        if tid not in rows.index:
            continue
        row = rows.loc[tid]
        if row["status"] != trial["status"]:
            problems.append(f"trial {tid}: leaderboard says {row['status']}, record "
                            f"{trial['status']} ({trial['state']})")
        shown = None if pd.isna(row.get(metric)) else float(row[metric])
        if not _same(shown, trial["value"]):
            problems.append(f"trial {tid}: leaderboard's {metric} {shown}, record's "
                            f"{trial['value']}")
        curve = epochs[epochs.trial_id == tid]
        viewed = {int(e): float(v) for e, v in zip(curve.epoch, curve[metric])
                  if not pd.isna(v)}
        recorded = {e: v for e, v in trial["epochs"].items() if math.isfinite(v)}
        if set(viewed) != set(recorded) or not all(_same(viewed[e], recorded[e])
                                                   for e in recorded):
            problems.append(f"trial {tid}: epochs.csv's {metric} by epoch {viewed}, "
                            f"record's {recorded}")
    return problems


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def trained_again(board: pd.DataFrame, epochs: pd.DataFrame, folder: Path,
                  metric: str = METRIC) -> list[str]:
    """Trials that had ended in the views `board` and `epochs` (read earlier, e.g. just after
    a kill) whose epochs in `folder`'s epochs.csv now differ from those they had then (epoch,
    value, start and end times), one line each: [] when none trained again."""
    _, now = read_views(folder)
    columns = ["epoch", metric, "t_start", "t_end"]
    problems = []
    for tid, status in zip(board.trial_id, board.status):
        if status not in ENDED:
            continue
        then = epochs[epochs.trial_id == tid][columns].sort_values("epoch")
        after = now[now.trial_id == tid][columns].sort_values("epoch")
        if not then.reset_index(drop=True).equals(after.reset_index(drop=True)):
            problems.append(f"trial {tid} ({status}) had epochs\n{then.to_string()}\n"
                            f"and has\n{after.to_string()}")
    return problems


def epoch_gaps(folder: Path) -> list[str]:
    """Trials whose epochs in epochs.csv are not 1..epochs_trained once each, one line each."""
    board, epochs = read_views(folder)
    problems = []
    for tid, trained in zip(board.trial_id, board.epochs_trained):
        seen = sorted(int(e) for e in epochs[epochs.trial_id == tid].epoch)
        if seen != list(range(1, int(trained) + 1)):
            problems.append(f"trial {tid}: {trained} epochs trained, epochs.csv has {seen}")
    return problems


def ended_then_changed(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[str]:
    """Real trials that had ended in the record `before` (read earlier, e.g. just after a
    kill) whose state, status or epochs differ in the record `after`, one line each: [] when
    every trial that had ended kept what it had."""
    now = {t["number"]: t for t in after}
    problems = []
    for t in before:
        if not t["real"] or t["state"] in ("RUNNING", "WAITING"):
            continue
        later = now.get(t["number"])
        what = {k: t[k] for k in ("state", "status", "epochs")}
        if later is None or {k: later[k] for k in what} != what:
            problems.append(f"trial {t['number']} had ended as {what}; now "
                            f"{later and {k: later[k] for k in what}}")
    return problems
