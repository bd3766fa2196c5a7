"""A study folder, results/<study>/: its name, its metadata (study.json), the data it searched."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from hpo.files import write_atomic, write_json


def choose_folder(results: Path, name: str, fresh: bool) -> Path:
    """results/<name>, or with --fresh the first results/<name>-N that does not exist yet."""
    folder = results / name
    n = 2
    while fresh and folder.exists():
        folder, n = results / f"{name}-{n}", n + 1
    return folder


def check_study_folder(folder: Path) -> None:
    """Raise ValueError unless `folder` is a study folder (one `hpo search` made)."""
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such study folder")
    if not (folder / "study.json").is_file() and not (folder / "leaderboard.csv").is_file():
        raise ValueError(f"{folder}: not a study folder (no study.json or leaderboard.csv)")


def read_meta(study: Path) -> dict[str, Any]:
    """study.json, or {} for a folder that has none yet. Raises ValueError when it is not
    readable JSON."""
    path = study / "study.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def versions() -> dict[str, str]:
    """Versions of what shapes a result, recorded beside it."""
    import optuna
    import pandas
    import torch

    out = {"python": sys.version.split()[0], "torch": torch.__version__,
           "optuna": optuna.__version__, "pandas": pandas.__version__}
    try:
        import ray

        out["ray"] = ray.__version__
    except ImportError:
        pass
    return out


def busy_fraction(intervals: list[tuple[float, float]], start: float, end: float) -> float:
    """Share of [start, end] covered by at least one interval (trials training or evaluating)."""
    covered, reach = 0.0, start
    for a, b in sorted(intervals):
        a, b = max(a, reach), min(b, end)
        if b > a:
            covered += b - a
            reach = b
    return covered / max(1e-9, end - start)


def write_meta(study: Path, meta: dict[str, Any]) -> None:
    write_json(study / "study.json", meta)


def begin_study(plan, data) -> dict[str, Any]:
    """Record a run of the search `plan` (hpo.tuning.options.Plan) on `data` in study.json:
    on the study's first run its identity (what a resume must match) and space.py, on every
    run the options it ran with. Returns the metadata written."""
    study, options = plan.folder, plan.options
    meta = dict(plan.meta)
    if not meta:
        meta.update(identity=plan.identity(data.content), started=now(), runs=[])
        write_atomic(study / "space.py", plan.space.source)
    resolved = {**dataclasses.asdict(options), "max_epochs": plan.space.max_epochs,
                "grace_period": plan.space.grace_period}
    meta.update(space=str(plan.space.path), data=options.data, fingerprint=data.fingerprint,
                options=_jsonable(resolved), trials=plan.space.trials, versions=versions(),
                finished=None)
    meta["runs"] = [*meta.get("runs", []), {"started": now(), "host": socket.gethostname(),
                                             "pid": os.getpid(), "trials": plan.space.trials}]
    write_meta(study, meta)
    return meta


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    return str(obj) if isinstance(obj, Path) else obj


def load_study_data(study: Path, data: str | None = None, fraction: float | None = None):
    """The space and the data a study searched, with its test split: (Space, Dataset).

    `data` and `fraction` override what the study recorded (e.g. the full data for a final
    retrain of a study searched on a fraction).
    """
    from hpo.data import load_dataset

    meta = read_meta(study)
    options = meta.get("options", {})
    # the budget the study ran under (--max-epochs), so that a starting point retrained for a
    # side-by-side trains as long as the best config did
    space = apply_options(load_study_space(study), options)
    source = data or meta.get("data")
    if not source:
        raise ValueError(f"{study}: no data recorded; pass --data")
    frac = fraction if fraction is not None else options.get("fraction", 1.0)
    dataset = load_dataset(source, val_fraction=space.val_fraction,
                           seed=options.get("split_seed", 0),
                           fraction=frac, image_size=space.image_size, channels=space.channels)
    return space, dataset


def apply_options(space, options: Mapping[str, Any]):
    """`space` under the budget a search's options set: `trials`, `max_epochs` (which also
    caps the grace period) and `grace_period`, each left as the space file has it when None
    or absent. Raises ValueError for a grace period outside 1..max_epochs."""
    if options.get("trials") is not None:
        space = dataclasses.replace(space, trials=options["trials"])
    if options.get("max_epochs") is not None:
        space = dataclasses.replace(space, max_epochs=options["max_epochs"],
                                    grace_period=min(space.grace_period, options["max_epochs"]))
    grace = options.get("grace_period")
    if grace is not None:
        if not 1 <= grace <= space.max_epochs:
            raise ValueError(f"--grace-period must be in 1..{space.max_epochs} (the max epochs "
                             f"of a trial), got {grace}")
        space = dataclasses.replace(space, grace_period=grace)
    return space


def load_study_space(study: Path):
    """The space a study searched: its copy in the folder, or, when the copy cannot load on
    its own (a space file that builds on another file beside it), the original it names."""
    from hpo.space import SpaceError, load_space

    try:
        return load_space(study / "space.py")
    except SpaceError:
        original = read_meta(study).get("space")
        if not original or not Path(original).is_file():
            raise
        space = load_space(original)
        if space.source != (study / "space.py").read_text():
            raise SpaceError(f"{study}: space.py does not load on its own and {original} "
                             "has changed since the study") from None
        return space
