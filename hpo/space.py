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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from hpo.config import MAX_DENSE, MAX_STAGES, check_value, complete
from hpo.errors import ConfigError, SpaceError
from hpo.registry import METRICS, SAMPLERS
from hpo.values import CHANNELS, COUNT, IMAGE_SIZE, VAL_FRACTION, WHOLE, Allowed, OneOf, Range

Predicate = Callable[[Mapping[str, Any]], bool]
# the user attribute that marks the Optuna trial a starting point was enqueued as (its name)
POINT_ATTR = "hpo_point"


@dataclass(frozen=True)
class Choice:
    """One of `values` (categorical)."""

    values: tuple
    when: Predicate | None = None

    def suggest(self, trial, name: str):
        return trial.suggest_categorical(name, list(self.values))

    def distribution(self):
        """Optuna's distribution of this dimension (what suggest() draws from)."""
        from optuna.distributions import CategoricalDistribution

        return CategoricalDistribution(list(self.values))

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

    def distribution(self):
        from optuna.distributions import FloatDistribution

        return FloatDistribution(self.low, self.high, log=self.log)

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

    def distribution(self):
        from optuna.distributions import IntDistribution

        return IntDistribution(self.low, self.high, step=self.step, log=self.log)

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
    dimensions: dict[str, Any]  # as the file declares them: name -> Dimension or a constant
    starting_points: dict[str, dict]
    # the rest of SETTINGS (their meanings and defaults are there)
    data: str | None
    image_size: int | None
    channels: int | None
    val_fraction: float
    concurrency: int | None
    sampler: str
    startup_trials: int

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
        point_name = trial.user_attrs.get(POINT_ATTR) if hasattr(trial, "user_attrs") else None
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
        them: enqueued in Optuna, they make define-by-run sampling return that config; for
        an earlier study's config (--warm-start), what this space can take of it (a value
        outside a dimension's range or choices, or a key it does not search, is dropped)."""
        return {k: config[k] for k, dim in self.searched().items()
                if k in config and (dim.when is None or dim.when(config))
                and _contains(dim, config[k])}

    def enqueue(self, study, config: dict[str, Any]) -> None:
        """Queue `config` (a starting point's or a sampled one) in an Optuna study, so that
        the trial Optuna hands out next samples exactly that config."""
        if config.get("point") in self.starting_points:
            study.enqueue_trial(self.point_params(config["point"]),
                                user_attrs={POINT_ATTR: config["point"]})
        elif config:
            study.enqueue_trial(self.params_of(config))

    def searched(self) -> dict[str, Dimension]:
        """The dimensions the search draws, in the file's order."""
        return {k: v for k, v in self.dimensions.items() if _is_dim(v)}

    def constants(self) -> dict[str, Any]:
        """The values the file fixes, in its order."""
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


@dataclass(frozen=True)
class Setting:
    """A module-level name a space file may set: the values it takes, its default (None:
    required, unless `optional`), and what it means."""

    allowed: Allowed | None
    default: Any
    help: str
    optional: bool = False


# Every name a space file may set besides `dimensions` and `starting_points` (the docs' table
# of them is made from this). `metric` and `mode` are checked as objectives (_objectives).
SETTINGS: dict[str, Setting] = {
    "metric": Setting(None, None, "what ranks the leaderboard and drives ASHA: "
                      + " or ".join(m for m, v in METRICS.items() if v.per_epoch)
                      + "; or a list of two, the second " + " or ".join(
                          m for m, v in METRICS.items() if not v.per_epoch)),
    "mode": Setting(None, None, "max or min for each metric; it can only be each metric's "
                    "own (" + ", ".join(f"{m} {v.mode}" for m, v in METRICS.items())
                    + "), which is the default", optional=True),
    "trials": Setting(WHOLE, None, "trials a study runs (--trials overrides)"),
    "max_epochs": Setting(WHOLE, None, "epochs of a full trial; ASHA's max_t (--max-epochs)"),
    "grace_period": Setting(WHOLE, 1, "epochs before ASHA may stop a trial (--grace-period)"),
    "reduction_factor": Setting(Range(1, low_open=True), 3,
                                "ASHA keeps the top 1/reduction_factor at each rung"),
    "sampler": Setting(OneOf(tuple(SAMPLERS)), "tpe", "how Optuna proposes configs: "
                       + "; ".join(f"{k}, {v.description}" for k, v in SAMPLERS.items())),
    "startup_trials": Setting(COUNT, 10, "trials drawn at random before the sampler models "
                              "anything"),
    "val_fraction": Setting(VAL_FRACTION, 0.1, "share of the training images held out, with "
                            "a fixed seed, to validate every trial"),
    "data": Setting(None, None, "the default for --data", optional=True),
    "image_size": Setting(IMAGE_SIZE, None, "decode every image at this square size (default: "
                          "the images' own, which must then be one size)", optional=True),
    "channels": Setting(CHANNELS, None, "decode every image with 1 or 3 channels (default: 1 "
                        "when every sampled image is grayscale)", optional=True),
    "concurrency": Setting(WHOLE, None, "trials at once (default: as resources allow; "
                           "--concurrency overrides)", optional=True),
    "name": Setting(None, None, "the study's name (default: the file's name)", optional=True),
}
REQUIRED = tuple(k for k, s in SETTINGS.items() if s.default is None and not s.optional)


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
    missing = [n for n in (*REQUIRED, "dimensions") if not hasattr(module, n)]
    if missing:
        raise SpaceError(f"{path}: missing required name(s): {', '.join(missing)}")
    try:
        return _build(path, module)
    except (ConfigError, TypeError) as exc:
        raise SpaceError(f"{path}: {exc}") from None


def _build(path: Path, m) -> Space:
    values = {}
    for name, setting in SETTINGS.items():
        value = getattr(m, name, setting.default)
        if value is not None and setting.allowed is not None:
            setting.allowed.check(name, value)
        values[name] = value
    if values["grace_period"] > values["max_epochs"]:
        raise ConfigError(f"grace_period ({values['grace_period']}) exceeds max_epochs "
                          f"({values['max_epochs']})")
    if not isinstance(m.dimensions, dict):
        raise ConfigError("dimensions must be a dict of config key -> dimension or constant")
    for name, dim in m.dimensions.items():
        _check_dimension(name, dim)
    points = getattr(m, "starting_points", {}) or {}
    for pname, point in points.items():
        if not isinstance(point, dict):
            raise ConfigError(f"starting point {pname!r} must be a dict")
        for key, value in point.items():
            try:
                check_value(key, value)
            except ConfigError as exc:
                raise ConfigError(f"starting point {pname!r}: {exc}") from None
    return Space(
        name=values["name"] or path.stem,
        path=path,
        source=path.read_text(),
        objectives=_objectives(values["metric"], values["mode"]),
        trials=values["trials"],
        max_epochs=values["max_epochs"],
        grace_period=values["grace_period"],
        reduction_factor=float(values["reduction_factor"]),
        dimensions=dict(m.dimensions),
        starting_points=dict(points),
        data=values["data"],
        image_size=values["image_size"],
        channels=values["channels"],
        val_fraction=values["val_fraction"],
        concurrency=values["concurrency"],
        sampler=values["sampler"],
        startup_trials=values["startup_trials"],
    )


def _objectives(metric, mode) -> tuple[tuple[str, str], ...]:
    """metric/mode of a space file: one metric, or a list of two (the first ranks the
    leaderboard and drives ASHA; Optuna searches for the Pareto front of both). Each metric's
    direction is its own (hpo.registry.METRICS); a `mode` given must agree with it."""
    metrics = [metric] if isinstance(metric, str) else list(metric)
    if not 1 <= len(metrics) <= 2:
        raise ConfigError(f"metric must be one name, or a list of two; got {metric!r}")
    first = [m for m, v in METRICS.items() if v.per_epoch]
    if metrics[0] not in first:
        raise ConfigError(f"metric must be {' or '.join(map(repr, first))}, got {metrics[0]!r}")
    second = [m for m, v in METRICS.items() if not v.per_epoch]
    if len(metrics) == 2 and metrics[1] not in second:
        raise ConfigError(f"a second objective must be one of {second}, got {metrics[1]!r}")
    modes = [METRICS[m].mode for m in metrics]
    if mode is not None:
        given = [mode] if isinstance(mode, str) else list(mode)
        if given != modes:
            raise ConfigError(f"mode {mode!r} does not fit metric {metric!r}: "
                              + ", ".join(f"{m} is better {'higher' if d == 'max' else 'lower'}"
                                          for m, d in zip(metrics, modes))
                              + " (leave mode out)")
    return tuple(zip(metrics, modes))


def _check_dimension(name: str, dim) -> None:
    """Every value a dimension can produce must be a valid value of its config key."""
    if not _is_dim(dim):
        check_value(name, dim)
        return
    if isinstance(dim, (Uniform, IntRange)):
        if dim.low > dim.high:
            raise ConfigError(f"{name}: low {dim.low} is above high {dim.high}")
        if dim.log and dim.low <= 0:
            raise ConfigError(f"{name}: a log-scale range needs low > 0, got {dim.low}")
        if not all(math.isfinite(b) for b in dim.bounds()):
            raise ConfigError(f"{name}: bounds must be finite")
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
