"""What a search is asked to do: the command line's options, checked against the space file
and the data before anything is created under results/."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from hpo.data import Dataset, load_dataset
from hpo.space import Space
from hpo.study import apply_options, check_resumable, choose_folder


class StudyError(ValueError):
    """Bad input found before a study starts (options, data); one line, naming the file."""


@dataclass
class SearchOptions:
    """What the command line may override or add to a space file."""

    data: str | None = None
    trials: int | None = None
    max_epochs: int | None = None
    grace_period: int | None = None
    name: str | None = None
    gpus_per_trial: float | None = None  # default: from each trial's measured memory
    trials_per_gpu: int = 4  # at most, when hpo picks the fractions
    cpus_per_trial: float = 1.0
    fraction: float = 1.0
    address: str | None = None  # None: start Ray on this machine
    fresh: bool = False  # a new study under a new name, instead of resuming results/<name>
    storage: str | None = None  # Optuna storage URL (default: SQLite in the study folder)
    storage_path: str | None = None  # Tune's trial storage every node reaches (path or URI)
    num_cpus: int | None = None  # CPUs of a local Ray (default: all)
    concurrency: int | None = None
    seed: int = 0
    results: Path = Path("results")
    weights_dir: str | None = None  # pretrained backbones' weights (hpo/backbone.py)


def prepare(space: Space, options: SearchOptions) -> tuple[Space, Dataset, Path]:
    """Apply the options to the space, load the data and choose the study folder, without
    creating anything under results/ (so bad input leaves nothing behind).

    Raises StudyError (DataError for the data) with one line naming the file at fault.
    """
    try:
        return _prepare(space, options)
    except ValueError as exc:
        raise StudyError(str(exc)) from None


def _prepare(space: Space, options: SearchOptions) -> tuple[Space, Dataset, Path]:
    space = apply_options(space, dataclasses.asdict(options))
    if options.trials_per_gpu < 1:
        raise ValueError("--trials-per-gpu must be 1 or more")
    if options.gpus_per_trial is not None and options.gpus_per_trial <= 0:
        raise ValueError("--gpus-per-trial must be above 0")
    source = options.data or space.data
    if not source:
        raise ValueError(f"{space.path}: no data: pass --data or set `data` in the space file")
    data = load_dataset(source, val_fraction=space.val_fraction, seed=options.seed,
                        fraction=options.fraction, image_size=space.image_size,
                        channels=space.channels)
    folder = choose_folder(options.results, options.name or space.name, options.fresh)
    check_resumable(folder, space.source, data.fingerprint)
    return space, data, folder
