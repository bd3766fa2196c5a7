"""The study's leaderboard: one row per trial, best first, kept as a CSV that is always whole.

Written by the search driver as trials report; read by `hpo leaderboard`, `hpo export` and
pandas. Every file here is replaced whole (hpo.files), so a reader sees the previous version
or the next, never part of one.
"""

from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from hpo.config import LABELS, SCHEMA, schema_key
from hpo.files import write_atomic, write_json

if TYPE_CHECKING:
    import pandas as pd

STATUSES = ("running", "completed", "stopped", "failed", "infeasible", "diverged", "oom",
            "interrupted")
RANKED = ("running", "completed", "stopped", "interrupted")  # trained to a value worth ranking
FINISHED = ("completed", "stopped")  # what best.json, best.pt and `hpo train` may pick
# ended by neither its epochs nor ASHA: the row's reason says why
FAILURES = ("failed", "infeasible", "diverged", "oom")
# per epoch: where it ran (node) and on what: the data's fingerprint, and how many images the
# trial's process decoded itself (0: it used the driver's copy from the object store)
EPOCH_COLUMNS = ("trial_id", "epoch", "val_acc", "val_loss", "train_loss", "img_per_s",
                 "t_start", "t_end", "node", "data", "decoded")
FIXED = ("rank", "trial_id", "point", "status", "reason", "best_epoch", "epochs_trained",
         "params", "wall_s", "img_per_s", "node")
_KEY_ORDER = {k: i for i, k in enumerate(SCHEMA)}


def _config_columns(keys) -> list[str]:
    """Config keys in schema order (per-stage keys by stage), labels first."""
    def order(k):
        digits = [int(p) for p in k.split("_") if p.isdigit()]
        return (k not in LABELS, _KEY_ORDER.get(schema_key(k), len(_KEY_ORDER)), digits, k)
    return sorted(keys, key=order)


class Leaderboard:
    """Rows of a running study, keyed by trial id; `write()` publishes them as CSV."""

    def __init__(self, path: Path, metric: str, mode: str,
                 others: tuple[tuple[str, str], ...] = ()):
        self.path, self.metric, self.mode = Path(path), metric, mode
        self.others = tuple(others)  # further objectives: then a `pareto` column marks the front
        self.rows: dict[str, dict[str, Any]] = {}
        # every epoch of every trial, by trial and epoch: the learning curves
        self.curves: dict[str, dict[int, dict[str, Any]]] = {}
        self._started: dict[str, float] = {}

    @classmethod
    def load(cls, path: Path, metric: str, mode: str,
             others: tuple[tuple[str, str], ...] = ()) -> Leaderboard:
        """The leaderboard a previous run of the study left (empty when there is none)."""
        board = cls(path, metric, mode, others)
        configs_path = board.path.parent / "configs.json"
        if not (board.path.is_file() and configs_path.is_file()):
            return board
        configs = json.loads(configs_path.read_text())
        frame = read_leaderboard(board.path).astype(object)
        for record in frame.where(frame.notna(), None).to_dict("records"):
            tid = str(record["trial_id"])
            row = {k: record[k] for k in (*FIXED[1:], metric) if record.get(k) is not None}
            board.rows[tid] = {**row, "trial_id": tid, "config": configs.get(tid, {})}
        epochs_path = board.path.parent / "epochs.csv"
        if epochs_path.is_file():
            import pandas as pd

            curves = pd.read_csv(epochs_path, dtype={"trial_id": str})
            for record in curves.astype(object).where(curves.notna(), None).to_dict("records"):
                board.curves.setdefault(str(record["trial_id"]), {})[int(record["epoch"])] = record
        return board

    def start(self, trial_id: str, config: Mapping[str, Any]) -> None:
        """A trial began, or began again after a retry or a resume: then it goes on from its
        last checkpoint, and the epochs it reports again replace those it reported before."""
        self._started[trial_id] = time.time()
        row = self.rows.get(trial_id)
        if row is None:
            self.rows[trial_id] = {"trial_id": trial_id, "config": dict(config),
                                   "status": "running", "reason": "", "epochs_trained": 0}
        else:
            row.update(status="running", reason="")

    def result(self, trial_id: str, metrics: Mapping[str, Any]) -> None:
        """One epoch's report from a trial."""
        row = self.rows[trial_id]
        epoch = int(metrics.get("epoch", 0))
        if epoch > 0:
            # a trial started again re-reports the epochs after its checkpoint
            curve = self.curves.setdefault(trial_id, {})
            for later in [e for e in curve if e >= epoch]:
                del curve[later]
            curve[epoch] = {"trial_id": trial_id, "epoch": epoch,
                            **{k: metrics.get(k) for k in EPOCH_COLUMNS[2:]}}
            self._rank_epochs(row)
        row["epochs_trained"] = epoch if epoch > 0 else row.get("epochs_trained", 0)
        row["params"] = metrics.get("params", row.get("params"))
        if metrics.get("img_per_s"):
            row["img_per_s"] = round(metrics["img_per_s"], 1)
        row["node"] = metrics.get("node", row.get("node", ""))
        if metrics.get("status") not in (None, "running", "completed"):
            row["status"], row["reason"] = metrics["status"], metrics.get("reason", "")
        row["wall_s"] = round(time.time() - self._started.get(trial_id, time.time()), 2)

    def _rank_epochs(self, row: dict[str, Any]) -> None:
        """The row's best value and epoch, from the trial's epochs."""
        values = [(e[self.metric], e["epoch"])
                  for e in self.curves.get(row["trial_id"], {}).values()
                  if e.get(self.metric) is not None and math.isfinite(e[self.metric])]
        if values:
            sign = 1 if self.mode == "max" else -1
            value, epoch = max(values, key=lambda v: (sign * v[0], -v[1]))
            row[self.metric], row["best_epoch"] = value, epoch
        else:
            row.pop(self.metric, None)
            row.pop("best_epoch", None)

    def finish(self, trial_id: str, status: str | None = None, reason: str = "") -> None:
        """A trial ended. Without `status`, it is decided from what the trial reported:
        its own terminal status, else completed at its full epochs, else stopped by ASHA."""
        row = self.rows[trial_id]
        if status is None:
            if row["status"] not in ("running", "completed"):
                return
            done = row["epochs_trained"] >= row["config"].get("epochs", math.inf)
            status = "completed" if done else "stopped"
        row["status"], row["reason"] = status, reason or row.get("reason", "")

    def drop(self, trial_id: str) -> None:
        """Forget a trial and its epochs (one a resumed run re-enqueues under a new id)."""
        self.rows.pop(trial_id, None)
        self.curves.pop(trial_id, None)

    def reconcile(self, ended: Mapping[str, Mapping[str, Any]], unfinished: set[str]) -> None:
        """Make the rows agree with the study's record (the Optuna study): `ended` maps each
        trial that ended to {"config", "status", "reason", metric, "epochs_trained"}, and
        `unfinished` names the trials a resumed run continues. A row the record does not know
        goes; a trial that ended after the last write of this file gets its status, or its
        row when it had none."""
        for tid in [t for t in self.rows if t not in ended and t not in unfinished]:
            self.drop(tid)
        for tid, what in ended.items():
            row = self.rows.setdefault(tid, {"trial_id": tid, "config": dict(what["config"]),
                                             "epochs_trained": what.get("epochs_trained", 0)})
            if row.get("status") != what["status"]:
                row.update(status=what["status"], reason=what.get("reason") or "")
            if row.get(self.metric) is None and what.get(self.metric) is not None:
                row[self.metric] = what[self.metric]

    def frame(self) -> pd.DataFrame:
        """The leaderboard as a DataFrame: fixed columns, the metric, then the config keys."""
        import pandas as pd

        rows = sorted(self.rows.values(), key=self._sort_key)
        keys = _config_columns({k for r in rows for k in r["config"]})
        records = []
        for rank, row in enumerate(rows, 1):
            record = {c: row.get(c) for c in FIXED}
            record["rank"] = rank
            record["point"] = row["config"].get("point", "")
            record[self.metric] = row.get(self.metric)
            record.update({k: row["config"].get(k) for k in keys if k not in LABELS})
            records.append(record)
        columns = list(FIXED[:4]) + [self.metric] + list(FIXED[4:])
        if self.others:
            front = self._pareto(rows)
            for record, row in zip(records, rows):
                record["pareto"] = row["trial_id"] in front
            columns.insert(5, "pareto")
        columns += [k for k in keys if k not in LABELS]
        return pd.DataFrame.from_records(records, columns=columns)

    def _pareto(self, rows) -> set[str]:
        """Trial ids no other trial beats on every objective (and strictly on one)."""
        objectives = [(self.metric, self.mode), *self.others]

        def point(row):
            values = [row.get(m) for m, _ in objectives]
            if any(v is None for v in values):
                return None
            return [-v if mode == "max" else v for v, (_, mode) in zip(values, objectives)]

        points = {r["trial_id"]: p for r in rows if (p := point(r)) is not None}
        return {tid for tid, p in points.items() if not any(
            all(a <= b for a, b in zip(q, p)) and q != p for q in points.values())}

    def _sort_key(self, row):
        # trials that trained normally first, by value; then those that diverged or failed
        # (their value, if any, is not one to pick); then those with no value at all
        value = row.get(self.metric)
        if value is None:
            return (2, 0.0, _number(row["trial_id"]))
        group = 0 if row.get("status") in RANKED else 1
        return (group, -value if self.mode == "max" else value, _number(row["trial_id"]))

    def write(self) -> None:
        """Publish leaderboard.csv, and beside it configs.json (each trial's exact config,
        types intact, which is what `hpo export` reads) and epochs.csv (every epoch's report:
        the learning curves)."""
        # configs first: a crash between the two writes must not leave a row whose config
        # `hpo export` or a resumed run cannot find
        write_json(self.path.parent / "configs.json",
                   {tid: row["config"] for tid, row in self.rows.items()})
        buf = io.StringIO()
        self.frame().to_csv(buf, index=False)
        write_atomic(self.path, buf.getvalue())
        import pandas as pd

        buf = io.StringIO()
        epochs = [e for curve in self.curves.values() for _, e in sorted(curve.items())]
        pd.DataFrame.from_records(epochs, columns=EPOCH_COLUMNS).to_csv(buf, index=False)
        write_atomic(self.path.parent / "epochs.csv", buf.getvalue())

    def best(self) -> dict[str, Any] | None:
        """The best finished (completed or stopped) row that has a value, or None."""
        rows = [r for r in self.rows.values()
                if r.get(self.metric) is not None and r.get("status") in FINISHED]
        return min(rows, key=self._sort_key) if rows else None


def _number(trial_id: str) -> tuple:
    # trial ids are the study's trial numbers: 10 comes after 9
    return (0, int(trial_id), "") if str(trial_id).isdigit() else (1, 0, str(trial_id))


def read_leaderboard(study: str | Path) -> pd.DataFrame:
    """The leaderboard of a study folder (or of a leaderboard.csv path)."""
    path = Path(study)
    path = path / "leaderboard.csv" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no leaderboard here (is this a study folder?)")
    import pandas as pd  # here: a wrong path is told before pandas' second of importing

    return pd.read_csv(path, keep_default_na=False, na_values=[""])


def config_at_rank(study: str | Path, rank: int = 1) -> dict[str, Any]:
    """The complete config of the trial at `rank` (1 = best), as the trial received it."""
    import csv

    study = Path(study)
    path = study / "leaderboard.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{study}: no leaderboard here (is this a study folder?)")
    with open(path, newline="") as f:
        ids = {int(row["rank"]): row["trial_id"] for row in csv.DictReader(f)}
    if rank not in ids:
        raise ValueError(f"{study}: no trial at rank {rank} (the study has {len(ids)})")
    return json.loads((study / "configs.json").read_text())[ids[rank]]
