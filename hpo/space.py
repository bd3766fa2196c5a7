"""Space files: the primitives a user writes in spaces/*.py, and loading one into a Space.

A space file is plain Python. It imports the primitives below (never Ray), sets the budget and
the metric, and lists the searched dimensions in a dict whose keys are config keys
(hpo/config.py). A dimension with `when=` exists only in configs where its predicate holds,
which is how per-stage settings and optimizer-specific settings are expressed.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from hpo.config import MAX_DENSE, MAX_STAGES, check_value, complete

Predicate = Callable[[Mapping[str, Any]], bool]


class SpaceError(ValueError):
    """A space file that cannot be used; the message is one line naming the file."""


@dataclass(frozen=True)
class Choice:
    """One of `values` (categorical)."""

    values: tuple
    when: Predicate | None = None

    def suggest(self, trial, name: str):
        return trial.suggest_categorical(name, list(self.values))

    def bounds(self) -> list:
        return list(self.values)

    def describe(self) -> str:
        return "{" + ", ".join(map(repr, self.values)) + "}"


@dataclass(frozen=True)
class Uniform:
    """A float in [low, high], both inclusive; on a log scale when `log`."""

    low: float
    high: float
    log: bool = False
    when: Predicate | None = None

    def suggest(self, trial, name: str):
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def bounds(self) -> list:
        return [self.low, self.high]

    def describe(self) -> str:
        return f"[{self.low:g}, {self.high:g}]" + (" log" if self.log else "")


@dataclass(frozen=True)
class IntRange:
    """An integer in [low, high], BOTH inclusive (unlike Python's range), every `step`."""

    low: int
    high: int
    step: int = 1
    log: bool = False
    when: Predicate | None = None

    def suggest(self, trial, name: str):
        return trial.suggest_int(name, self.low, self.high, step=self.step, log=self.log)

    def bounds(self) -> list:
        return [self.low, self.high]

    def describe(self) -> str:
        return f"{self.low}..{self.high}" + (f" step {self.step}" if self.step > 1 else "")


Dimension = Choice | Uniform | IntRange


def choice(values, *, when: Predicate | None = None) -> Choice:
    """One of `values`, e.g. choice(["sgd", "adam"])."""
    return Choice(tuple(values), when)


def uniform(low: float, high: float, *, when: Predicate | None = None) -> Uniform:
    """A float drawn uniformly from [low, high]."""
    return Uniform(float(low), float(high), False, when)


def loguniform(low: float, high: float, *, when: Predicate | None = None) -> Uniform:
    """A float in [low, high] drawn uniformly on a log scale (learning rates, weight decay)."""
    return Uniform(float(low), float(high), True, when)


def intrange(low: int, high: int, *, step: int = 1, log: bool = False,
             when: Predicate | None = None) -> IntRange:
    """An integer in [low, high], both inclusive."""
    return IntRange(int(low), int(high), int(step), log, when)


def stage(s: int) -> Predicate:
    """`when=` predicate: the config has at least `s` stages."""
    return lambda c: c["stages"] >= s


def dense(i: int) -> Predicate:
    """`when=` predicate: the config has at least `i` dense layers."""
    return lambda c: c["dense_layers"] >= i


@dataclass(frozen=True)
class Space:
    """A loaded space file: budget, metric, dimensions, constants and named starting points."""

    name: str
    path: Path
    source: str
    objectives: tuple[tuple[str, str], ...]  # (metric, mode) of each; the first ranks
    trials: int
    max_epochs: int
    grace_period: int
    reduction_factor: float
    dimensions: dict[str, Any]  # name -> Dimension or a constant
    starting_points: dict[str, dict] = field(default_factory=dict)
    data: str | None = None
    image_size: int | None = None
    channels: int | None = None
    val_fraction: float = 0.1
    concurrency: int | None = None
    sampler: str = "tpe"  # how Optuna proposes configs: one of SAMPLERS
    startup_trials: int = 10  # trials drawn at random before the sampler models anything

    @property
    def metric(self) -> str:
        """The metric that ranks the leaderboard and drives ASHA (the first objective)."""
        return self.objectives[0][0]

    @property
    def mode(self) -> str:
        return self.objectives[0][1]

    def rungs(self) -> list[int]:
        """ASHA's rungs below max_epochs, where it keeps the top 1/reduction_factor of the
        trials: grace_period × reduction_factor^k epochs, as Ray's ASHAScheduler places them."""
        rungs, k = [], 0
        while (rung := self.grace_period * self.reduction_factor**k) < self.max_epochs:
            rungs.append(round(rung))
            k += 1
        return rungs

    def sample(self, trial) -> dict[str, Any]:
        """Draw one config with an Optuna trial (define-by-run); return the complete config.

        A trial enqueued with user attribute `hpo_point` returns that starting point instead;
        its values that lie inside a dimension are still suggested, so TPE learns from them.
        """
        point_name = trial.user_attrs.get("hpo_point") if hasattr(trial, "user_attrs") else None
        if point_name:
            # the trial was enqueued with point_params(): these suggestions return its values
            for name in self.point_params(point_name):
                self.dimensions[name].suggest(trial, name)
            return self.point(point_name)
        config: dict[str, Any] = {}
        skipped = []
        for name, dim in self.dimensions.items():
            if not _is_dim(dim):
                config[name] = dim
            elif dim.when is None or dim.when(config):
                config[name] = dim.suggest(trial, name)
            else:
                skipped.append(name)
        config["epochs"] = min(config.get("epochs", self.max_epochs), self.max_epochs)
        full = complete(config)
        for name in skipped:
            full.pop(name, None)
        return full

    def point(self, name: str) -> dict[str, Any]:
        """The complete config of a named starting point, under this space's budget."""
        base = {k: v for k, v in self.dimensions.items() if not _is_dim(v)}
        base.update(self.starting_points[name])
        base["epochs"] = self.max_epochs
        return {**complete(base), "point": name}

    def point_params(self, name: str) -> dict[str, Any]:
        """The starting point's values of the searched dimensions that exist for it and hold
        its value: what Optuna records for it, so TPE learns from the point as from any trial."""
        return self.params_of(self.point(name))

    def params_of(self, config: dict[str, Any]) -> dict[str, Any]:
        """A config's values of the searched dimensions that exist for it and lie inside
        them: enqueued in Optuna, they make define-by-run sampling return that config."""
        return {k: config[k] for k, dim in self.searched().items()
                if k in config and (dim.when is None or dim.when(config))
                and _contains(dim, config[k])}

    def enqueue(self, study, config: dict[str, Any]) -> None:
        """Queue `config` (a starting point's or a sampled one) in an Optuna study, so that
        the trial Optuna hands out next samples exactly that config."""
        if config.get("point") in self.starting_points:
            study.enqueue_trial(self.point_params(config["point"]),
                                user_attrs={"hpo_point": config["point"]})
        elif config:
            study.enqueue_trial(self.params_of(config))

    def searched(self) -> dict[str, Dimension]:
        return {k: v for k, v in self.dimensions.items() if _is_dim(v)}

    def constants(self) -> dict[str, Any]:
        return {k: v for k, v in self.dimensions.items() if not _is_dim(v)}


def _is_dim(value) -> bool:
    return isinstance(value, (Choice, Uniform, IntRange))


def _contains(dim: Dimension, value) -> bool:
    if isinstance(dim, Choice):
        return any(value == v and type(value) is type(v) for v in dim.values)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(dim, IntRange) and (int(value) != value or (value - dim.low) % dim.step):
        return False
    return dim.low <= value <= dim.high


REQUIRED = ("metric", "mode", "trials", "max_epochs", "dimensions")


def load_space(path: str | Path) -> Space:
    """Import a space file by path and validate it; never imports Ray.

    Raises SpaceError with one line naming the file and the problem.

    Example:
        >>> space = load_space("spaces/cifar10.py")
        >>> space.trials, space.metric
        (64, 'val_acc')
    """
    path = Path(path)
    if not path.is_file():
        raise SpaceError(f"{path}: no such space file")
    module_name = f"hpo_space_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # any error in user code is reported as one line
        raise SpaceError(f"{path}: could not import: {type(exc).__name__}: {exc}") from None
    finally:
        sys.modules.pop(module_name, None)
    missing = [n for n in REQUIRED if not hasattr(module, n)]
    if missing:
        raise SpaceError(f"{path}: missing required name(s): {', '.join(missing)}")
    try:
        space = _build(path, module)
    except (ValueError, TypeError) as exc:
        raise SpaceError(f"{path}: {exc}") from None
    return space


def _build(path: Path, m) -> Space:
    def get(name, default=None):
        return getattr(m, name, default)

    objectives = _objectives(m.metric, m.mode)
    for name, low in (("trials", 1), ("max_epochs", 1), ("grace_period", 1)):
        value = get(name, 1)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be a whole number >= {low}, got {value!r}")
    if get("grace_period", 1) > m.max_epochs:
        raise ValueError(f"grace_period ({m.grace_period}) exceeds max_epochs ({m.max_epochs})")
    rf = get("reduction_factor", 3)
    if not isinstance(rf, (int, float)) or rf <= 1:
        raise ValueError(f"reduction_factor must be > 1, got {rf!r}")
    if not isinstance(m.dimensions, dict):
        raise ValueError("dimensions must be a dict of config key -> dimension or constant")
    for name, dim in m.dimensions.items():
        _check_dimension(name, dim)
    points = get("starting_points", {}) or {}
    for pname, point in points.items():
        if not isinstance(point, dict):
            raise ValueError(f"starting point {pname!r} must be a dict")
        for key, value in point.items():
            try:
                check_value(key, value)
            except ValueError as exc:
                raise ValueError(f"starting point {pname!r}: {exc}") from None
    sampler, startup = get("sampler", "tpe"), get("startup_trials", 10)
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {list(SAMPLERS)}, got {sampler!r}")
    if not isinstance(startup, int) or isinstance(startup, bool) or startup < 0:
        raise ValueError(f"startup_trials must be a whole number >= 0, got {startup!r}")
    val_fraction = get("val_fraction", 0.1)
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    return Space(
        name=get("name", path.stem),
        path=path,
        source=path.read_text(),
        objectives=objectives,
        trials=m.trials,
        max_epochs=m.max_epochs,
        grace_period=get("grace_period", 1),
        reduction_factor=float(rf),
        dimensions=dict(m.dimensions),
        starting_points=dict(points),
        data=get("data"),
        image_size=get("image_size"),
        channels=get("channels"),
        val_fraction=val_fraction,
        concurrency=get("concurrency"),
        sampler=sampler,
        startup_trials=startup,
    )


SECOND_OBJECTIVES = ("params",)
# Optuna samplers a space file may name (hpo.tuning.searcher.make_sampler builds them):
SAMPLERS = {
    "tpe": "univariate TPE, a constant liar for trials still running (the default)",
    "tpe-multivariate": "TPE over the joint distribution of dimensions drawn together "
                        "(multivariate=True, group=True), with a constant liar",
    "gp": "Optuna's Gaussian-process sampler (learns from completed trials only)",
    "random": "uniform random draws (with ASHA: random search + early stopping)",
}  # trainable parameters, reported by every trial


def _objectives(metric, mode) -> tuple[tuple[str, str], ...]:
    """metric/mode of a space file: one pair, or two lists for two objectives (the first
    ranks the leaderboard and drives ASHA; Optuna searches for the Pareto front of both)."""
    metrics = [metric] if isinstance(metric, str) else list(metric)
    modes = [mode] if isinstance(mode, str) else list(mode)
    if len(metrics) != len(modes) or not 1 <= len(metrics) <= 2:
        raise ValueError(f"metric and mode must be one name each, or two lists of two; "
                         f"got {metric!r} and {mode!r}")
    for m in modes:
        if m not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {m!r}")
    if metrics[0] not in ("val_acc", "val_loss"):
        raise ValueError(f"metric must be 'val_acc' or 'val_loss', got {metrics[0]!r}")
    if len(metrics) == 2 and metrics[1] not in SECOND_OBJECTIVES:
        raise ValueError(f"a second objective must be one of {list(SECOND_OBJECTIVES)}, "
                         f"got {metrics[1]!r}")
    return tuple(zip(metrics, modes))


def _check_dimension(name: str, dim) -> None:
    """Every value a dimension can produce must be a valid value of its config key."""
    if not _is_dim(dim):
        check_value(name, dim)
        return
    if isinstance(dim, (Uniform, IntRange)):
        if dim.low > dim.high:
            raise ValueError(f"{name}: low {dim.low} is above high {dim.high}")
        if dim.log and dim.low <= 0:
            raise ValueError(f"{name}: a log-scale range needs low > 0, got {dim.low}")
        if not all(math.isfinite(b) for b in dim.bounds()):
            raise ValueError(f"{name}: bounds must be finite")
    for value in dim.bounds():
        check_value(name, value)


def random_configs(space: Space, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` configs drawn at random from `space` (Optuna's RandomSampler, in memory)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    configs = []
    for _ in range(n):
        trial = study.ask()
        configs.append(space.sample(trial))
        study.tell(trial, 0.0)
    return configs


__all__ = [
    "MAX_DENSE", "MAX_STAGES", "Space", "SpaceError", "choice", "dense", "intrange",
    "load_space", "loguniform", "random_configs", "stage", "uniform",
]
