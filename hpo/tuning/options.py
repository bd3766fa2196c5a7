"""What a search is asked to do, checked before anything starts.

`plan_search` turns the command line's options into a Plan: the space file loaded, its budget
applied, the study folder chosen, and, for a study that exists, its recorded settings filled
in where the command leaves them out and compared where it gives them. It imports neither
torch nor Ray and writes nothing, so a mistake costs a second and changes no file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpo.lock import StudyLock
from hpo.space import Space, load_space
from hpo.study import apply_options, choose_folder, read_meta
from hpo.weights import check_weights

CHECKPOINT_EVERY_S = 120.0  # the costliest checkpoint measured: ~1% of this; BENCHMARKS.md


class StudyError(ValueError):
    """Bad input found before a study starts (options, files, the study folder); one line."""


@dataclass(frozen=True)
class Bound:
    """The values a numeric option takes: `whole` numbers or reals from `low` (excluded when
    `low_open`) to `high`. The command line and hpo.search check with the same messages."""

    low: float
    high: float = math.inf
    low_open: bool = False
    whole: bool = False

    def parse(self, text: str) -> int | float:
        """The option's value in `text`; ValueError (the message to show) otherwise."""
        try:
            value = int(text) if self.whole else float(text)
        except ValueError:
            kind = "a whole number" if self.whole else "a number"
            raise ValueError(f"must be {kind}, got {text!r}") from None
        return self.check(value)

    def check(self, value) -> int | float:
        """`value` if it is within the bound; ValueError (the message to show) otherwise."""
        if isinstance(value, bool) or not isinstance(value, int if self.whole else (int, float)):
            kind = "a whole number" if self.whole else "a number"
            raise ValueError(f"must be {kind}, got {value!r}")
        low_ok = self.low < value if self.low_open else self.low <= value
        if not low_ok or value > self.high or math.isnan(value):
            if self.whole:
                span = f"{self.low:g} or more"
            elif self.high < math.inf:
                span = f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"
            else:
                span = f"above {self.low:g}" if self.low_open else f"{self.low:g} or more"
            raise ValueError(f"must be {span}, got {value if self.whole else f'{value:g}'}")
        return value


# Every numeric option of SearchOptions, by field (the command line's --time-budget is in
# minutes, the field in seconds: both above 0)
BOUNDS = {
    "trials": Bound(1, whole=True), "max_epochs": Bound(1, whole=True),
    "grace_period": Bound(1, whole=True), "fraction": Bound(0, 1, low_open=True),
    "split_seed": Bound(0, whole=True), "seed": Bound(0, whole=True),
    "gpus_per_trial": Bound(0, 64, low_open=True), "trials_per_gpu": Bound(1, whole=True),
    "cpus_per_trial": Bound(0, 1024, low_open=True), "num_cpus": Bound(1, whole=True),
    "concurrency": Bound(1, whole=True), "checkpoint_every": Bound(0),
    "epoch_budget": Bound(1, whole=True), "time_budget": Bound(0, low_open=True)}

# --log NAME: the experiment tracker, the module Ray's callback needs, the extra installing it
TRACKERS = {"mlflow": ("mlflow", "mlflow"), "wandb": ("wandb", "wandb")}


@dataclass
class SearchOptions:
    """What the command line may override or add to a space file. None means: the space
    file's value for a new study, the recorded one for a study that exists."""

    data: str | None = None
    trials: int | None = None
    max_epochs: int | None = None
    grace_period: int | None = None
    name: str | None = None
    fraction: float | None = None  # default 1.0
    split_seed: int | None = None  # default 0: which images are validation
    seed: int | None = None  # default 0: the sampler's
    storage: str | None = None  # Optuna storage URL (default: SQLite in the study folder)
    gpus_per_trial: float | None = None  # default: from each trial's measured memory
    trials_per_gpu: int = 4  # at most, when hpo picks the fractions
    cpus_per_trial: float = 1.0
    address: str | None = None  # None: start Ray on this machine
    fresh: bool = False  # a new study under a new name, instead of resuming results/<name>
    storage_path: str | None = None  # Tune's trial storage every node reaches (path or URI)
    num_cpus: int | None = None  # CPUs of a local Ray (default: all)
    concurrency: int | None = None
    checkpoint_every: float = CHECKPOINT_EVERY_S  # seconds of training between checkpoints
    keep_checkpoints: bool = False  # keep every trial's last checkpoint after it ends
    epoch_budget: int | None = None  # this run stops once its trials trained this many epochs
    time_budget: float | None = None  # ... or after this many seconds
    weights_dir: str | None = None  # pretrained backbones' weights (hpo/weights.py)
    results: Path = Path("results")
    log: tuple[str, ...] = ()  # experiment trackers every trial is logged to: mlflow, wandb
    wandb_project: str | None = None  # default: WANDB_PROJECT
    verbose: bool = False  # Ray's output on the terminal too (it always goes to ray.log)


# What makes a study: a resume must match these, or it would mix two searches in one record.
# Each maps to how the user sets it, for the message that names what differs.
IDENTITY = {"space": "the space file", "data": "--data (the images themselves)",
            "fraction": "--fraction", "split_seed": "--split-seed", "seed": "--seed",
            "max_epochs": "--max-epochs", "grace_period": "--grace-period",
            "storage": "--storage"}
# What a resume may change (README, "Nothing lost"); everything else is the identity above.
MUTABLE = ("trials", "concurrency", "cpus_per_trial", "gpus_per_trial", "trials_per_gpu",
           "num_cpus", "address", "storage_path", "checkpoint_every", "keep_checkpoints",
           "epoch_budget", "time_budget", "weights_dir", "log", "wandb_project", "verbose")
DEFAULTS = {"fraction": 1.0, "split_seed": 0, "seed": 0, "storage": None}


@dataclass(frozen=True)
class Plan:
    """A search ready to start: the space under its budget, every option resolved, the
    folder, and what the folder recorded ({} for a new study)."""

    space: Space
    options: SearchOptions
    folder: Path
    meta: dict[str, Any]

    @property
    def resumed(self) -> bool:
        return bool(self.meta)

    def identity(self, data_content: str) -> dict[str, Any]:
        """The settings that make this study, with the decoded images' content hash."""
        o = self.options
        return {"space": _sha256(self.space.source), "data": data_content,
                "fraction": o.fraction, "split_seed": o.split_seed, "seed": o.seed,
                "max_epochs": self.space.max_epochs, "grace_period": self.space.grace_period,
                "storage": o.storage}


def plan_search(space_path: str | os.PathLike, options: SearchOptions) -> Plan:
    """Check the options, the space file, the data's path and the study folder, and return
    the Plan; raise StudyError (one line naming the option, file or setting) otherwise.
    Reads, never writes; imports neither torch nor Ray."""
    options = check_options(options)
    try:
        space = load_space(space_path)
        check_weights(space=space, weights_dir=options.weights_dir)
    except ValueError as exc:  # SpaceError, WeightsError
        raise StudyError(str(exc)) from None
    folder = choose_folder(options.results, options.name or space.name, options.fresh)
    held = StudyLock(folder).holder()
    if held:
        raise StudyError(f"{folder}: another hpo search is running this study ({held}); "
                         "wait for it to end, or pass --name for a study of its own")
    meta = _recorded(folder)
    options = _resolve(options, meta.get("identity", {}), meta.get("data") or space.data)
    try:
        space = apply_options(space, dataclasses.asdict(options))
    except ValueError as exc:
        raise StudyError(str(exc)) from None
    plan = Plan(space, options, folder, meta)
    if meta:
        _compare(folder, meta["identity"], plan.identity(meta["identity"]["data"]))
    if not options.data:
        raise StudyError(f"{space.path}: no data: pass --data or set `data` in the space file")
    check_data_path(options.data)
    _check_writable(folder)
    return plan


def check_options(options: SearchOptions) -> SearchOptions:
    """`options` with paths as paths, checked one by one against BOUNDS and the trackers
    (named, installed, a W&B project known); StudyError naming the option otherwise."""
    for name, bound in BOUNDS.items():
        value = getattr(options, name)
        if value is not None:
            try:
                bound.check(value)
            except ValueError as exc:
                raise StudyError(f"{name}: {exc}") from None
    log = (options.log,) if isinstance(options.log, str) else tuple(options.log or ())
    for name in log:
        if name not in TRACKERS:
            raise StudyError(f"--log {name}: not a tracker hpo logs to (choose from "
                             f"{', '.join(TRACKERS)})")
        module, extra = TRACKERS[name]
        if not _installed(module):
            raise StudyError(f"--log {name}: {module} is not installed; install hpo's "
                             f"extra: pip install -e '.[{extra}]'")
    if "wandb" in log and not (options.wandb_project or os.environ.get("WANDB_PROJECT")):
        raise StudyError("--log wandb: no W&B project; pass --wandb-project or set "
                         "WANDB_PROJECT")
    return dataclasses.replace(
        options, log=log, results=Path(options.results),
        data=None if options.data is None else os.fspath(options.data))


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: blocked (None in sys.modules)
        return False


def check_data(plan: Plan, content: str) -> None:
    """Raise StudyError when a resumed study's recorded images differ from `content`."""
    if plan.meta:
        _compare(plan.folder, plan.meta["identity"], plan.identity(content))


def _recorded(folder: Path) -> dict[str, Any]:
    if not folder.exists():
        return {}
    if not folder.is_dir():
        raise StudyError(f"{folder}: exists and is not a folder; pass --name for another study")
    try:
        meta = read_meta(folder)
    except ValueError as exc:
        raise StudyError(f"{folder / 'study.json'}: unreadable ({exc}); pass --fresh for a "
                         "new study, or --name") from None
    if not meta:
        others = [p.name for p in folder.iterdir() if p.name != ".lock"]
        if others:
            raise StudyError(f"{folder}: holds files but no study.json, so it is not an hpo "
                             "study; pass --name for another folder")
        return {}
    if "identity" not in meta:
        raise StudyError(f"{folder}: made by an older hpo that recorded no study identity; "
                         "pass --fresh to start a new study beside it")
    return meta


def _resolve(options: SearchOptions, recorded: dict[str, Any],
             data: str | None) -> SearchOptions:
    """Options with the recorded value (else the default) wherever the command left one out."""
    filled = {}
    for key in ("fraction", "split_seed", "seed", "max_epochs", "grace_period", "storage"):
        if getattr(options, key) is None:
            filled[key] = recorded.get(key, DEFAULTS.get(key))
    return dataclasses.replace(options, data=options.data or data, **filled)


def _compare(folder: Path, recorded: dict[str, Any], given: dict[str, Any]) -> None:
    for key, how in IDENTITY.items():
        if recorded.get(key) == given[key]:
            continue
        if key == "space":
            raise StudyError(f"{folder}: the space file differs from the one this study "
                             f"searched ({folder / 'space.py'}); pass --fresh to start a new "
                             "study, or --name")
        if key == "data":
            raise StudyError(f"{folder}: {how} differ from the ones this study searched "
                             f"(content {recorded.get(key)}, given {given[key]}); "
                             "pass --fresh to start a new study, or --name")
        raise StudyError(f"{folder}: {how} differs from this study's: recorded "
                         f"{recorded.get(key)!r}, given {given[key]!r}; pass --fresh to start "
                         "a new study, or --name")


def check_data_path(data: str | None) -> None:
    """Raise StudyError when `data` (--data) names no file or folder; None passes."""
    if not data or data.startswith("torchvision:"):
        return  # a folder torchvision downloads into; it may not exist yet
    if not Path(data).exists():
        raise StudyError(f"{data}: does not exist (--data)")


def _check_writable(folder: Path) -> None:
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise StudyError(f"{existing}: is a file, not a folder; pass --results with a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise StudyError(f"{existing}: cannot write here (permission denied or read-only); "
                         "pass --results for another folder")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
