"""The study folder's files, rebuilt from the record and from nothing else.

`rebuild` writes leaderboard.csv, epochs.csv, configs.json, best.json, study.json and space.py
from a Record: at the start of every run (so a view that is missing, damaged or stale is simply
made again), while trials report, and at the end. A view is never read back as an input.
"""

from __future__ import annotations

import io
from collections import Counter
from typing import Any

from hpo.files import write_atomic, write_json
from hpo.folder import StudyFolder
from hpo.leaderboard import frame
from hpo.record import (
    BEST_WEIGHTS,
    DATA,
    DUPLICATE,
    EPOCH_FIELDS,
    IDENTITY,
    IMPORTANCES,
    REJECTED,
    RUNS,
    SELECT,
    SPACE,
    TRIALS,
    WARM_START,
    Record,
    masked,
)

EPOCH_COLUMNS = ("trial_id", "epoch", *EPOCH_FIELDS)


def objectives(record: Record) -> tuple[tuple[str, str], ...]:
    """The study's (metric, mode) pairs, as its record keeps them."""
    return tuple(tuple(o) for o in record.meta[SPACE]["objectives"])


def rebuild(folder: StudyFolder, record: Record) -> None:
    """Write every view of `record` into `folder`, each file whole. configs.json goes first:
    a leaderboard row must never name a trial whose config a reader cannot find."""
    import pandas as pd

    trials = record.real()
    write_json(folder.configs, {str(t.number): t.config for t in trials})
    _write_csv(folder.leaderboard, frame(trials, objectives(record)))
    epochs = [{"trial_id": t.number, **e} for t in trials for e in t.epochs]
    _write_csv(folder.epochs, pd.DataFrame.from_records(epochs, columns=EPOCH_COLUMNS))
    metric, mode = objectives(record)[0]
    best = record.best(metric, mode)
    if best is not None:
        write_json(folder.best_config, best.config)
    elif folder.best_config.exists():  # a record restored from before any trial finished
        folder.best_config.unlink()
    source = record.meta[SPACE]["source"]
    if not folder.space.is_file() or folder.space.read_text() != source:
        write_atomic(folder.space, source)
    write_json(folder.meta, summary(record))


def summary(record: Record) -> dict[str, Any]:
    """study.json: what the record says of the study as a whole."""
    meta = record.meta
    runs = meta.get(RUNS) or []
    last = runs[-1] if runs else {}
    trials = record.real()
    metric, mode = objectives(record)[0]
    best = record.best(metric, mode)
    out = {
        "identity": meta.get(IDENTITY), "trials": meta.get(TRIALS),
        "space": meta[SPACE].get("path"), "data": meta.get(DATA),
        "record": masked(record.url), "options": last.get("options", {}),
        "counts": dict(Counter(str(t.status) for t in trials)),
        "rejected": record.count(REJECTED), "duplicates": record.count(DUPLICATE),
        "warm_start": meta.get(WARM_START),
        "best": best and _best(best, metric, mode, meta.get(BEST_WEIGHTS)),
        "selection": meta.get(SELECT),
        "started": runs[0].get("started") if runs else None,
        "finished": last.get("ended") if last.get("ended") and not last.get("stopped_by")
        else None,
        "wall_s": round(sum(r.get("wall_s", 0) for r in runs), 1),
        "busy_fraction": last.get("busy_fraction"), "time": last.get("time"),
        "fingerprint": last.get("fingerprint"), "versions": last.get("versions"),
        "importances": meta.get(IMPORTANCES, {}),
        "runs": runs,
    }
    return out


def _best(best, metric: str, mode: str, weights: dict | None) -> dict[str, Any]:
    """study.json's best: its trial and value; once the selection reran it, its mean, spread
    and runs too; and which run's weights best.pt holds."""
    out = {"trial_id": best.number, metric: best.best(metric, mode)[0]}
    if (mean := best.mean(metric, mode)) is not None:
        out.update({f"{metric}_mean": mean[0], f"{metric}_sd": mean[1], "runs": mean[2],
                    "seeds": [best.config.get("seed", 0)] + [r["seed"] for r in best.reruns]})
    if weights and weights.get("trial") == best.number:
        out["weights"] = {"trial_id": best.number,
                          "seed": weights.get("seed", best.config.get("seed", 0))}
    return out


def _write_csv(path, df) -> None:
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    write_atomic(path, buf.getvalue())


def repair(folder: StudyFolder) -> None:
    """Rebuild the views of a study that no driver runs now from its SQLite record (a damaged
    or deleted leaderboard, say). Raises StudyError when the record is elsewhere (a database:
    its password is not written down) or cannot be read, or a driver holds the study."""
    from hpo.errors import StudyError
    from hpo.lock import StudyLock

    held = StudyLock(folder.path).holder()
    if held:
        raise StudyError(f"{folder.path}: a search runs this study ({held}); its views are "
                         "rebuilt as it goes")
    if not folder.record.is_file():
        raise StudyError(f"{folder.path}: no record here (study.db) to rebuild the views from; "
                         "a study whose record is in a database is rebuilt by running its "
                         "search again with its --storage")
    with StudyLock(folder.path):
        record = Record.load(f"sqlite:///{folder.record.resolve()}", folder.name)
        if SPACE not in record.meta:
            raise StudyError(f"{folder.record}: records no hpo study")
        rebuild(folder, record)
