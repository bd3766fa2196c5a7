"""What `hpo search` and `hpo train` take, each option declared once.

An option is one field of `SearchOptions` or `TrainOptions`: its default, the values it allows,
its help and, for a search, what a resume does with it (`resume`):

    identity  part of what makes the study: its first run records it; a later run takes the
              recorded value when the option is left out and refuses a different one
    sticky    recorded; a later run keeps it when the option is left out, and may change it
    run       this run only

From these declarations come the command line's parser (`add_arguments`, used by hpo.cli),
the keyword checks of `hpo.search` and `Study.train` (`from_keywords`), the one validator
(`check`), the resume rules (hpo.study) and the docs' table of options (`describe`).
Imports neither torch nor Ray.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
from dataclasses import dataclass, field
from typing import Any

from hpo.errors import ConfigError
from hpo.registry import TRACKERS
from hpo.values import COUNT, FRACTION, WHOLE, Allowed, Name, OneOf, Range

IDENTITY, STICKY, RUN = "identity", "sticky", "run"
ENSEMBLE_OF = ("configs", "seeds")  # what an ensemble's members differ in
# bench/ensemble.py on one small CIFAR-10 study: seeds 1.0 point better in 3 of 3 repeats
# (BENCHMARKS.md), too little to move the default on
ENSEMBLE_OF_DEFAULT = "configs"
CHECKPOINT_EVERY_S = 120.0  # the costliest checkpoint measured: ~1% of this; BENCHMARKS.md


@dataclass(frozen=True)
class Option:
    help: str
    allowed: Allowed | None = None
    resume: str = RUN
    fallback: Any = None  # the value when neither given nor recorded (None: the space's)
    metavar: str | None = None
    scale: float = 1.0  # the command line's unit times this is the field's (minutes -> s)
    positional: bool = False
    path: bool = False  # a local path: made absolute, so a study works from any folder


def option(default: Any, help: str, allowed: Allowed | None = None, resume: str = RUN,
           **kw) -> Any:
    """A dataclass field declaring an option: its default, help, allowed values, what a
    resume does with it, and the rest of `Option`."""
    return field(default=default, metadata={"hpo": Option(help, allowed, resume, **kw)})


def _weights_dir() -> Any:
    return option(None, "folder of pretrained backbones' weights files, as torchvision names "
                  "them (default: torchvision's cache under $TORCH_HOME)", path=True)


def _seeds() -> Any:
    return option(3, "seeds of the retrain: one model per seed 0..N-1, each tested once",
                  WHOLE)


def declared(cls) -> dict[str, tuple[dataclasses.Field, Option]]:
    """The options `cls` declares: name -> (its field, its Option)."""
    return {f.name: (f, f.metadata["hpo"]) for f in dataclasses.fields(cls)
            if "hpo" in f.metadata}


@dataclass
class SearchOptions:
    """What `hpo search` and `hpo.search` take besides the space file. None means: the space
    file's value (or the recorded one, on a resume); see each option's help."""

    data: str | None = option(
        None, "dataset: a Parquet folder (Hugging Face layout), a torchvision CIFAR-10 folder, "
        "torchvision:DIR to download, or a folder of class folders (default: the space "
        "file's, or the study's on a resume; recorded as an absolute path, and identified "
        "by its images' content, so it may move)", resume=STICKY, path=True)
    trials: int | None = option(
        None, "trials the study runs (default: the space file's, or the study's on a "
        "resume); more than a finished study ran extends it", WHOLE, STICKY)
    max_epochs: int | None = option(
        None, "epochs of a full trial; ASHA's max_t (default: the space file's)", WHOLE,
        IDENTITY)
    grace_period: int | None = option(
        None, "epochs before ASHA may stop a trial, 1..max epochs (default: the space "
        "file's)", WHOLE, IDENTITY)
    fraction: float | None = option(
        None, "train on this fixed-seed fraction of the training images, for quick runs",
        FRACTION, IDENTITY, fallback=1.0)
    split_seed: int | None = option(
        None, "seed of the validation split and of --fraction", COUNT, IDENTITY, fallback=0)
    seed: int | None = option(None, "seed of the sampler", COUNT, IDENTITY, fallback=0)
    warm_start: str | None = option(
        None, "an earlier study's folder: a new study's sampler starts from its trials "
        "(configs, values, per-epoch curves), keeping of each config what the space file "
        "still searches and allows; given to a study that exists, it is ignored", path=True)
    storage: str | None = option(
        None, "the study's record in a database every node reaches, e.g. "
        "postgresql+psycopg://user:pass@host/db (default: results/<study>/study.db); its "
        "password is never written down, so pass it again on a resume", resume=IDENTITY)
    select: int | None = option(
        None, "before the study names its best, its top N completed configs train again "
        "with other seeds at their full epochs, and the best mean wins (0: one run's value "
        "decides; default 3, or the study's on a resume)", COUNT, STICKY, metavar="N",
        fallback=3)
    select_seeds: int | None = option(
        None, "more seeds each of those configs trains with (default 2, or the study's on a "
        "resume)", COUNT, STICKY, metavar="N", fallback=2)
    name: str | None = option(
        None, "the study's name and folder (default: the space file's); an existing study "
        "of that name is resumed", Name())
    fresh: bool = option(False, "start a new study under a new name (<name>-2, ...) instead "
                         "of resuming")
    results: str = option("results", "folder of study folders", path=True)
    address: str | None = option(
        None, "join a running Ray cluster (HOST:PORT, or auto on a node of it); default: "
        "start Ray on this machine")
    storage_path: str | None = option(
        None, "where trials write results and checkpoints: a path every node shares, or "
        "s3://... / gs://... (default: the study folder)")
    num_cpus: int | None = option(None, "CPUs the local Ray may use (default: all)", WHOLE)
    cpus_per_trial: float = option(1.0, "CPUs per trial", Range(0, 1024, low_open=True))
    gpus_per_trial: float | None = option(
        None, "GPU fraction per trial (default: from each trial's predicted memory, "
        "calibrated on the GPU)", Range(0, 64, low_open=True))
    trials_per_gpu: int = option(4, "at most this many trials share a GPU when hpo picks",
                                 WHOLE)
    concurrency: int | None = option(None, "trials at once (default: as resources allow)",
                                     WHOLE)
    node_wait: float = option(
        600.0, "on a cluster with an autoscaler, how long to wait for the nodes a trial "
        "needs before giving up", Range(0, low_open=True), metavar="MINUTES", scale=60)
    checkpoint_every: float = option(
        CHECKPOINT_EVERY_S, "seconds of training between a trial's checkpoints (it also "
        "checkpoints at each ASHA rung and at its end)", Range(0), metavar="SECONDS")
    keep_checkpoints: bool = option(
        False, "keep every trial's last checkpoint after it ends (default: only the best "
        "trial's weights, as best.pt)")
    epoch_budget: int | None = option(
        None, "stop this run once its trials have trained this many epochs in all (the "
        "same command continues the study)", WHOLE, metavar="EPOCHS")
    time_budget: float | None = option(
        None, "stop this run after this many minutes (the same command continues)",
        Range(0, low_open=True), metavar="MINUTES", scale=60)
    storage_timeout: float = option(
        60.0, "how long a record that stops answering (a database restarting) is retried "
        "before the search stops as Ctrl-C does", Range(0, low_open=True),
        metavar="SECONDS")
    weights_dir: str | None = _weights_dir()
    log: tuple[str, ...] = option(
        (), "also log every trial to this experiment tracker (repeatable): "
        + "; ".join(f"{k} ({v.where})" for k, v in TRACKERS.items()), OneOf(tuple(TRACKERS)))
    wandb_project: str | None = option(None, "the W&B project of --log wandb (default: "
                                       "WANDB_PROJECT)")
    verbose: bool = option(False, "show Ray's output on the terminal too (it always goes to "
                           "results/<study>/ray.log)")
    final: bool = option(False, "then retrain the best config on train + validation and "
                         "test it, as hpo train does")
    seeds: int = _seeds()


@dataclass
class TrainOptions:
    """What `hpo train` and `Study.train` take."""

    target: str = option(None, "a study folder (retrains its best config) or a config .json",
                         positional=True, path=True)
    seeds: int = _seeds()
    point: tuple[str, ...] = option((), "retrain this starting point of the study's space "
                                    "instead (repeatable)")
    data: str | None = option(None, "dataset (default: the one the study searched)",
                              path=True)
    fraction: float | None = option(None, "train on a fixed-seed fraction of the training "
                                    "images (default: the study's)", FRACTION)
    epochs: int | None = option(None, "train this many epochs instead of the config's", WHOLE)
    out: str | None = option(None, "output folder (default: <study>/final)", path=True)
    weights_dir: str | None = _weights_dir()
    ensemble: int | None = option(
        None, "retrain K models and test their averaged prediction once (and each model "
        "once), instead of one config once per seed (--seeds is not used)",
        Range(2, whole=True), metavar="K")
    ensemble_of: str = option(
        ENSEMBLE_OF_DEFAULT, "what the --ensemble's models are: configs (the study's top K "
        "completed configs, seed 0 each) or seeds (the best config, seeds 0..K-1)",
        OneOf(ENSEMBLE_OF))


def identity_keys() -> list[str]:
    return [n for n, (_, o) in declared(SearchOptions).items() if o.resume == IDENTITY]


def check(options):
    """`options` (SearchOptions or TrainOptions) checked option by option, the one place
    that does: each value against what it allows, paths made absolute, a tracker named by
    --log installed and told where to log. Returns the options as checked; raises
    ConfigError naming the option otherwise."""
    changes = {}
    for name, (f, o) in declared(type(options)).items():
        value = getattr(options, name)
        if value is None or value == f.default and not o.path:
            continue
        if isinstance(f.default, tuple):
            value = (value,) if isinstance(value, str) else tuple(dict.fromkeys(value))
            for item in value:
                if o.allowed is not None:
                    o.allowed.check(name, item)
                elif not isinstance(item, str):
                    raise ConfigError(f"{name} must be names, got {item!r}")
        elif isinstance(f.default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{name} must be True or False, got {value!r}")
        elif o.allowed is not None:
            o.allowed.check(name, value)
        elif not isinstance(value, (str, os.PathLike)):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        if o.path and not str(value).startswith(("torchvision:", "s3://", "gs://")):
            value = os.path.abspath(os.path.expanduser(os.fspath(value)))
        elif o.path:
            kind, rest = str(value).split(":", 1)
            if kind == "torchvision":
                value = f"{kind}:{os.path.abspath(os.path.expanduser(rest))}"
        changes[name] = value
    options = dataclasses.replace(options, **changes)
    if isinstance(options, SearchOptions):
        _check_trackers(options)
    elif options.ensemble and options.point:
        raise ConfigError("--ensemble and --point: an ensemble is of the study's best configs "
                          "or the best one's seeds, not of starting points; pass one of them")
    return options


def _check_trackers(options: SearchOptions) -> None:
    for name in options.log:
        tracker = TRACKERS[name]
        if not _installed(tracker.module):
            raise ConfigError(f"--log {name}: {tracker.module} is not installed; install "
                              f"hpo's extra: pip install -e '.[{tracker.extra}]'")
    if "wandb" in options.log and not (options.wandb_project
                                       or os.environ.get("WANDB_PROJECT")):
        raise ConfigError("--log wandb: no W&B project; pass --wandb-project or set "
                          "WANDB_PROJECT")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: blocked (None in sys.modules)
        return False


def from_keywords(cls, keywords: dict[str, Any], who: str):
    """`cls` (SearchOptions, TrainOptions) from a Python caller's keywords, checked; TypeError
    for a keyword that is no option (`who` names the function)."""
    names = list(declared(cls))
    unknown = [k for k in keywords if k not in names]
    if unknown:
        raise TypeError(f"{who}: no option {unknown[0]!r} (options: {', '.join(names)})")
    return check(cls(**keywords))


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """One argument of `parser` per option of `cls`, each checked as it is parsed (a bad
    value stops the command line with one line naming the option and what it allows)."""
    for name, (f, o) in declared(cls).items():
        kw: dict[str, Any] = {"help": _help(f, o)}
        if o.positional:
            parser.add_argument(name, **kw)
            continue
        if isinstance(f.default, bool):
            kw["action"] = "store_true"
        elif isinstance(f.default, tuple):
            kw.update(action="append", default=[])
            if isinstance(o.allowed, OneOf):
                kw["choices"] = list(o.allowed.choices)
        else:
            kw["default"] = None if o.scale != 1 else f.default
            if o.allowed is not None:
                kw["type"] = _parser(o)
            if o.metavar:
                kw["metavar"] = o.metavar
        parser.add_argument(flag(name), dest=name, **kw)


def from_arguments(cls, args: argparse.Namespace):
    """`cls` from what `add_arguments`' parser parsed, in the fields' units, checked."""
    values = {}
    for name, (f, o) in declared(cls).items():
        value = getattr(args, name)
        if isinstance(f.default, tuple):
            value = tuple(value)
        elif value is None and o.scale != 1:
            value = f.default
        elif value is not None and o.scale != 1:
            value = value * o.scale
        values[name] = value
    return check(cls(**values))


def _parser(o: Option):
    def parse(text: str):
        try:
            return o.allowed.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse


def _help(f: dataclasses.Field, o: Option) -> str:
    default = f.default if o.fallback is None else o.fallback
    if isinstance(default, (bool, tuple)) or default is None:
        return o.help
    return f"{o.help} (default {_shown(default, o)})"


def _shown(default: Any, o: Option) -> str:
    """A default as the command line takes it: in its unit, 120 rather than 120.0."""
    value = default / o.scale if o.scale != 1 else default
    return f"{value:g}" if isinstance(value, float) else str(value)


def describe(cls) -> list[dict[str, str]]:
    """The options of `cls` as the docs' table lists them: flag, values, default, what a
    resume does, help."""
    rows = []
    for name, (f, o) in declared(cls).items():
        default = f.default if o.fallback is None else o.fallback
        rows.append({"option": name if o.positional else flag(name),
                     "values": o.allowed.describe() if o.allowed else
                     "flag" if isinstance(f.default, bool) else (o.metavar or "text"),
                     "default": "" if default is None or default is False or default == ()
                     else _shown(default, o),
                     "on a resume": {IDENTITY: "must match", STICKY: "kept unless given",
                                     RUN: "this run only"}[o.resume],
                     "help": o.help})
    return rows
