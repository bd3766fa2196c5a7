"""The study's leaderboard: one row per trial, best first, made from the record's trials.

`frame` is a pure function of the record (hpo.views writes it as leaderboard.csv); the readers
here are what `hpo leaderboard`, `hpo export`, the report and pandas users go through:
`read_leaderboard` gives a DataFrame, `read_rows` the same values as `Rows` without importing
pandas (a second of `hpo leaderboard`'s otherwise).
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

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
    board = pd.DataFrame.from_records(records, columns=columns)
    if selected:  # a count, blank where a trial was not rerun: not 3.0
        board["runs"] = board["runs"].astype("Int64")
    return board


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


@dataclass(frozen=True)
class Rows:
    """A leaderboard in plain Python, what `hpo leaderboard` prints from: its columns in the
    file's order and a dict per row, each value as read_leaderboard's frame has it (an int, a
    float, a bool or a str), a blank as None."""

    columns: list[str]
    rows: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.rows)

    def column(self, name: str) -> list[Any]:
        return [row[name] for row in self.rows]

    def head(self, n: int) -> Rows:
        return Rows(self.columns, self.rows[:n])


def rows_of(board: pd.DataFrame) -> Rows:
    """A leaderboard frame (read_leaderboard's) as Rows: numpy's values as Python's, NaN as
    None."""
    import pandas as pd

    return Rows(list(board.columns), [{c: None if pd.isna(v) else v for c, v in row.items()}
                                      for row in board.to_dict("records")])


def read_rows(study: str | Path) -> Rows:
    """The leaderboard of a study folder (or of a leaderboard.csv path) as Rows, read without
    pandas when the file is as hpo writes it. Anything else (damage, a hand edit pandas might
    read its own way) goes to read_leaderboard: its StudyError, or its frame as Rows."""
    path = _leaderboard_path(study)
    try:
        return _parse(path)
    except (ValueError, OSError, csv.Error):  # a UnicodeDecodeError is a ValueError
        return rows_of(read_leaderboard(path))


def read_leaderboard(study: str | Path) -> pd.DataFrame:
    """The leaderboard of a study folder (or of a leaderboard.csv path). Raises StudyError,
    one line naming the file, when there is none or it cannot be read."""
    path = _leaderboard_path(study)
    if not path.is_file():
        raise StudyError(f"{path}: no leaderboard here (is this a study folder?)")
    import pandas as pd  # here: a wrong path is told before pandas' second of importing

    try:
        board = pd.read_csv(path, keep_default_na=False, na_values=[""])
        _check(list(board.columns), lambda c: board[c].tolist())
        return board
    except (ValueError, OSError, UnicodeDecodeError) as exc:  # pandas' parser errors too
        raise StudyError(f"{path}: cannot be read ({str(exc).strip().splitlines()[0]}); "
                         "the study's record rebuilds it: `hpo leaderboard "
                         f"{path.parent}` where the record is its study.db, the study's "
                         "`hpo search` where it is in a --storage database") from None


def _leaderboard_path(study: str | Path) -> Path:
    path = Path(study)
    return StudyFolder(path).leaderboard if path.is_dir() else path


def _check(columns: list[str], values: Callable[[str], list[Any]]) -> None:
    """Raise ValueError, saying why, unless `columns` are a leaderboard's (every fixed one
    there) and the `values` of
    its rank and trial_id columns whole numbers, of its status column statuses."""
    if columns[:len(KEY)] != list(KEY) or len(columns) <= len(KEY):
        raise ValueError(f"its columns do not start {', '.join(KEY)} and the metric")
    if lacking := [c for c in FIXED if c not in columns]:
        raise ValueError(f"it has no {lacking[0]} column")
    for column in ("rank", "trial_id"):
        if not all(type(v) is int for v in values(column)):  # a bool is no rank
            raise ValueError(f"its {column} column holds more than whole numbers")
    if not set(values("status")) <= {s.value for s in Status}:
        raise ValueError("its status column holds words that are no status")


# a value as pandas' read_csv is sure to type it (the forms DataFrame.to_csv writes)
_INT = re.compile(r"-?[0-9]+")
_FLOAT = re.compile(r"-?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?|-?inf")
_BOOLS = {"True": True, "False": False}


def _parse(path: Path) -> Rows:
    """leaderboard.csv read with the csv module, each column typed as pandas types it. Raises
    ValueError where pandas might read the file otherwise (blank lines, rows of another
    length, a repeated or unnamed column, a value in a form `_typed` leaves to pandas) and
    where `_check` finds it damaged."""
    with open(path, newline="", encoding="utf-8") as f:
        header, *body = csv.reader(f)
    if len(set(header)) < len(header) or "" in header or any(
            len(row) != len(header) for row in body):
        raise ValueError("not as hpo writes it")
    columns = {c: _typed([row[i] for row in body]) for i, c in enumerate(header)}
    _check(header, columns.__getitem__)
    return Rows(header, [dict(zip(header, values)) for values in zip(*columns.values())])


def _typed(texts: list[str]) -> list[Any]:
    """A column's values as read_csv(keep_default_na=False, na_values=[""]) types them: whole
    numbers as ints (floats once one is blank, as pandas has no blank int), numbers as floats,
    True and False as bools, else the text; a blank as None. Raises ValueError for a column
    pandas may type otherwise (" 1", "+1", "TRUE", a number beyond 64 bits)."""
    present = [t for t in texts if t]
    if any(len(t) > 18 and _INT.fullmatch(t) for t in present):
        raise ValueError("a whole number beyond 64 bits, which pandas may keep as text")
    if present and all(_INT.fullmatch(t) for t in present):
        whole = int if len(present) == len(texts) else float
        return [whole(t) if t else None for t in texts]
    if present and all(_FLOAT.fullmatch(t) for t in present):
        return [float(t) if t else None for t in texts]
    if present and all(t in _BOOLS for t in present):
        return [_BOOLS.get(t) for t in texts]
    if present and all(_loose(t) for t in present):
        raise ValueError("numbers or truth values pandas may read in its own way")
    return [t or None for t in texts]


def _loose(text: str) -> bool:
    """Whether pandas might read `text` as a number or a truth value (Python's float takes
    more than pandas does, which is the side to err on)."""
    if text.strip().lower() in ("true", "false"):
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True


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
    rows (read_rows: without pandas) with configs.json's configs."""
    folder = StudyFolder(study)
    board = read_rows(folder.path)
    try:
        configs = json.loads(folder.configs.read_text())
        return sorted((r["rank"], r["trial_id"], r["status"], configs[str(r["trial_id"])])
                      for r in board.rows)
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise StudyError(f"{folder.path}: its configs.json cannot be read ({exc}); "
                         f"`hpo leaderboard {folder.path}` rebuilds it from the record") from None


def failures(board: pd.DataFrame) -> pd.DataFrame:
    """The rows that ended by neither their epochs nor ASHA (failed, infeasible, diverged,
    oom)."""
    return board[board["status"].isin(FAILURES)]
