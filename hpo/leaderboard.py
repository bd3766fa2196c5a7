"""The study's leaderboard: one row per trial, best first, made from the record's trials.

`frame` is a pure function of the record (hpo.views writes it as leaderboard.csv); the readers
here are what `hpo leaderboard`, `hpo export`, the report and pandas users go through.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from hpo.config import LABELS, SCHEMA, schema_key
from hpo.errors import StudyError
from hpo.folder import StudyFolder
from hpo.registry import sign
from hpo.status import FAILURES, RANKED, Status

if TYPE_CHECKING:
    import pandas as pd

    from hpo.record import TrialRecord

# the columns every leaderboard has, around the metric (which follows "status") and, with two
# objectives, "pareto" (after the metric); then one column per config key
FIXED = ("rank", "trial_id", "point", "status", "reason", "best_epoch", "epochs_trained",
         "params", "wall_s", "img_per_s", "node")
KEY = FIXED[:4]  # ... then the metric
_KEY_ORDER = {k: i for i, k in enumerate(SCHEMA)}


def metric_of(columns: Iterable[str]) -> str:
    """The metric column of a leaderboard (the one after the key columns)."""
    return list(columns)[len(KEY)]


def config_columns(keys) -> list[str]:
    """Config keys in schema order (per-stage keys by stage), labels left out."""
    def order(k):
        digits = [int(p) for p in k.split("_") if p.isdigit()]
        return (_KEY_ORDER.get(schema_key(k), len(_KEY_ORDER)), digits, k)
    return sorted((k for k in keys if k not in LABELS), key=order)


def frame(trials: Iterable[TrialRecord], objectives: tuple[tuple[str, str], ...]
          ) -> pd.DataFrame:
    """The leaderboard of the record's trials: rank, the fixed columns, the metric (the best
    value over a trial's epochs), with two objectives a `pareto` column, once the selection
    reran the top configs their mean and standard deviation over all their runs and how many
    (`<metric>_mean`, `<metric>_sd`, `runs`; best.json is the best mean), then the config
    keys. The selection's trials rank first, by mean (rank 1 is best.json); then those that
    trained normally, by value; then those that failed,
    diverged, ran out of memory or were infeasible (their value is none to pick); then those
    with none."""
    import pandas as pd

    (metric, mode), others = objectives[0], objectives[1:]
    rows = []
    for t in trials:
        best = t.best(metric, mode)
        last = t.epochs[-1] if t.epochs else {}
        seconds = sum((e.get("t_end") or 0) - (e.get("t_start") or 0) for e in t.epochs)
        row = {"trial_id": t.number, "point": t.config.get("point", ""), "status": t.status,
               "reason": t.reason, metric: best[0] if best else None,
               "best_epoch": best[1] if best else None, "epochs_trained": t.epochs_trained,
               "params": t.params, "wall_s": round(seconds, 2) if t.epochs else None,
               "img_per_s": round(last["img_per_s"], 1) if last.get("img_per_s") else None,
               "node": last.get("node") or ""}
        if (mean := t.mean(metric, mode)) is not None:
            row.update({f"{metric}_mean": mean[0], f"{metric}_sd": mean[1], "runs": mean[2]})
        rows.append((row, t.config))

    def rank(item):
        row = item[0]
        value = row[metric]
        if value is None:
            return (3, 0.0, row["trial_id"])
        if f"{metric}_mean" in row:  # the selection's: by mean, as the study's best is
            return (0, -sign(mode) * row[f"{metric}_mean"], row["trial_id"])
        return (1 if row["status"] in RANKED else 2, -sign(mode) * value, row["trial_id"])

    rows.sort(key=rank)
    keys = config_columns({k for _, c in rows for k in c})
    selected = ([f"{metric}_mean", f"{metric}_sd", "runs"]
                if any("runs" in r for r, _ in rows) else [])
    columns = [*KEY, metric, *(["pareto"] if others else []), *selected, *FIXED[len(KEY):],
               *keys]
    front = _pareto([r for r, _ in rows], objectives) if others else set()
    records = []
    for n, (row, config) in enumerate(rows, 1):
        record = {**row, "rank": n, **{k: config.get(k) for k in keys}}
        if others:
            record["pareto"] = row["trial_id"] in front
        records.append(record)
    return pd.DataFrame.from_records(records, columns=columns)


def _pareto(rows: list[dict[str, Any]], objectives) -> set[int]:
    """Trial ids no other trial beats on every objective (and strictly on one)."""
    def point(row):
        values = [row.get(m) for m, _ in objectives]
        if any(v is None for v in values):
            return None
        return [-sign(mode) * v for v, (_, mode) in zip(values, objectives)]

    points = {r["trial_id"]: p for r in rows if (p := point(r)) is not None}
    return {tid for tid, p in points.items() if not any(
        all(a <= b for a, b in zip(q, p)) and q != p for q in points.values())}


def read_leaderboard(study: str | Path) -> pd.DataFrame:
    """The leaderboard of a study folder (or of a leaderboard.csv path). Raises StudyError,
    one line naming the file, when there is none or it cannot be read."""
    path = Path(study)
    path = StudyFolder(path).leaderboard if path.is_dir() else path
    if not path.is_file():
        raise StudyError(f"{path}: no leaderboard here (is this a study folder?)")
    import pandas as pd  # here: a wrong path is told before pandas' second of importing

    try:
        board = pd.read_csv(path, keep_default_na=False, na_values=[""])
        if list(board.columns[:len(KEY)]) != list(KEY) or len(board.columns) <= len(KEY):
            raise ValueError(f"its columns do not start {', '.join(KEY)} and the metric")
        for column in ("rank", "trial_id"):
            if len(board) and not pd.api.types.is_integer_dtype(board[column]):
                raise ValueError(f"its {column} column holds more than whole numbers")
        if not set(board["status"]) <= {s.value for s in Status}:
            raise ValueError("its status column holds words that are no status")
        return board
    except (ValueError, OSError, UnicodeDecodeError) as exc:  # pandas' parser errors too
        raise StudyError(f"{path}: cannot be read ({str(exc).strip().splitlines()[0]}); "
                         "the study's record rebuilds it: `hpo leaderboard "
                         f"{path.parent}` where the record is its study.db, the study's "
                         "`hpo search` where it is in a --storage database") from None


def config_at_rank(study: str | Path, rank: int = 1) -> dict[str, Any]:
    """The complete config of the trial at `rank` (1 = best), as the trial received it."""
    ranked = _ranked(study)
    found = [config for r, _, _, config in ranked if r == rank]
    if not found:
        raise StudyError(f"{StudyFolder(study).path}: no trial at rank {rank} (the study has "
                         f"{len(ranked)})")
    return found[0]


def completed_configs(study: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(trial id, complete config) of each trial that trained its full epochs (completed),
    in the leaderboard's order: best first."""
    return [(tid, config) for _, tid, status, config in _ranked(study)
            if status == Status.COMPLETED]


def _ranked(study: str | Path) -> list[tuple[int, int, str, dict[str, Any]]]:
    """(rank, trial id, status, complete config) of every trial, by rank: leaderboard.csv's
    rows with configs.json's configs, read without pandas."""
    folder = StudyFolder(study)
    if not folder.leaderboard.is_file():
        raise StudyError(f"{folder.path}: no leaderboard here (is this a study folder?)")
    try:
        with open(folder.leaderboard, newline="") as f:
            rows = [(int(row["rank"]), int(row["trial_id"]), row["status"])
                    for row in csv.DictReader(f)]
        configs = json.loads(folder.configs.read_text())
        return sorted((rank, tid, status, configs[str(tid)]) for rank, tid, status in rows)
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise StudyError(f"{folder.path}: its leaderboard or configs.json cannot be read "
                         f"({exc}); `hpo leaderboard {folder.path}` rebuilds them from the "
                         "record") from None


def failures(board: pd.DataFrame) -> pd.DataFrame:
    """The rows that ended by neither their epochs nor ASHA (failed, infeasible, diverged,
    oom)."""
    return board[board["status"].isin(FAILURES)]
