"""The trial config schema: every key a trial reads, its default and its allowed values.

A config is a flat, JSON-serialisable dict. Per-stage and per-layer keys carry their index
(`convs_2`, `width_3`, `dropout_1`, `dense_2`), so every key is one leaderboard column.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from hpo.errors import ConfigError
from hpo.registry import ACTIVATIONS, BACKBONE_STAGES, BACKBONES, OPTIMIZERS, SCHEDULES
from hpo.values import BOOL, Allowed, OneOf, Range

MAX_STAGES = 5
MAX_DENSE = 3


@dataclass(frozen=True)
class Key:
    """One config key: its default and the values it allows."""

    default: Any
    allowed: Allowed

    def check(self, name: str, value: Any) -> None:
        """Raise ConfigError naming `name` when `value` is not allowed."""
        self.allowed.check(name, value)

    @property
    def choices(self) -> tuple | None:
        """The values a categorical key takes (None for a numeric one)."""
        return self.allowed.choices if isinstance(self.allowed, OneOf) else None


def _int(default, low, high):
    return Key(default, Range(low, high, whole=True))


def _float(default, low, high, positive=False):
    return Key(default, Range(low, high, low_open=positive))


def _one_of(default, choices):
    return Key(default, OneOf(tuple(choices)))


def _flag(default):
    return Key(default, BOOL)


# Keys with '#' stand for one key per stage (1..MAX_STAGES) or dense layer (1..MAX_DENSE).
SCHEMA: dict[str, Key] = {
    # run
    "epochs": _int(10, 1, 1000),
    "batch_size": _int(256, 1, 8192),
    "seed": _int(0, 0, 2**31 - 1),
    # architecture: stages of convs, each stage optionally pooled
    "stages": _int(3, 1, MAX_STAGES),
    "convs_#": _int(2, 1, 3),
    "width": _int(64, 1, 2048),  # channels of stage 1 when width_# is absent
    "growth": _float(2.0, 1.0, 4.0),  # width of stage s = width * growth**(s-1)
    "width_#": _int(64, 1, 4096),  # explicit stage width; overrides width/growth
    "width_#_#": _int(64, 1, 4096),  # explicit width of one conv of one stage
    "kernel": _one_of(3, (3, 5)),
    "padding": _one_of("same", ("same", "valid")),
    "pool": _one_of("max", ("max", "avg", "conv")),
    "pool_last": _flag(True),
    "activation": _one_of("relu", ACTIVATIONS),
    "bn": _one_of("before", ("none", "before", "after")),  # relative to the activation
    "residual": _flag(False),
    "conv_bias": _flag(True),
    "dropout_#": _float(0.0, 0.0, 0.6),  # after stage #
    "head": _one_of("gap", ("gap", "flatten")),
    "dense_layers": _int(0, 0, MAX_DENSE),
    "dense_#": _int(256, 1, 8192),
    "dense_bn": _flag(False),
    "dropout_head": _float(0.0, 0.0, 0.6),  # after each dense layer
    # a pretrained torchvision network in place of the stages above (hpo/backbone.py)
    "backbone": _one_of("none", ("none", *BACKBONES)),
    "pretrained": _flag(True),  # ImageNet weights, else a random start
    "cut": _int(BACKBONE_STAGES, 1, BACKBONE_STAGES),  # stages kept, from the input
    "frozen": _int(BACKBONE_STAGES, 0, BACKBONE_STAGES),  # stages frozen; >= cut: all
    "backbone_lr": _float(1.0, 0.0, 10.0, positive=True),  # x lr for its unfrozen stages
    "input_size": _int(0, 0, 1024),  # images resized on the device per batch; 0: as decoded
    # augmentation, applied per sample on the device; 0 or False means off
    "aug_flip": _flag(False),
    "aug_crop": _int(0, 0, 16),  # pixels of padding before the random crop
    "aug_rotate": _float(0.0, 0.0, 180.0),  # degrees, uniform in +-
    "aug_zoom": _float(0.0, 0.0, 0.9),  # scale uniform in [1-z, 1+z]
    "aug_shear": _float(0.0, 0.0, 60.0),  # degrees
    "aug_cutout": _int(0, 0, 64),  # side of the erased square, pixels
    "aug_brightness": _float(0.0, 0.0, 1.0),
    "aug_contrast": _float(0.0, 0.0, 1.0),
    "normalize": _flag(True),  # per-channel mean/std of the training split
    # optimisation
    "optimizer": _one_of("sgd", OPTIMIZERS),
    "lr": _float(0.05, 0.0, 10.0, positive=True),
    "momentum": _float(0.9, 0.0, 0.999),  # sgd and rmsprop
    "nesterov": _flag(False),  # sgd with momentum > 0
    "weight_decay": _float(0.0, 0.0, 0.1),
    "label_smoothing": _float(0.0, 0.0, 0.5),
    # learning-rate schedule, stepped per batch (plateau: per epoch on val_loss)
    "schedule": _one_of("constant", SCHEDULES),
    "warmup_epochs": _float(0.0, 0.0, 100.0),
    "step_every": _int(10, 1, 1000),  # epochs between decays of the step schedule
    "step_gamma": _float(0.1, 0.0, 1.0, positive=True),
    "plateau_patience": _int(5, 0, 1000),
    "plateau_factor": _float(0.1, 0.0, 1.0, positive=True),
}

# Keys a config may carry that no trial reads: the starting point's name.
LABELS = ("point",)

# Keys only a config with a backbone has, and keys only hpo's own stages read (dropped then).
BACKBONE_KEYS = ("pretrained", "cut", "frozen", "backbone_lr", "input_size")
STAGE_KEYS = ("stages", "convs_#", "width", "growth", "width_#", "width_#_#", "kernel",
              "padding", "pool", "pool_last", "residual", "conv_bias", "dropout_#")


def schema_key(name: str) -> str:
    """The SCHEMA entry for a concrete key: 'width_2_1' -> 'width_#_#'."""
    return re.sub(r"_\d+", "_#", name)


def check_value(name: str, value: Any) -> None:
    """Raise ConfigError when `name` is not a config key or `value` is out of its range."""
    if name in LABELS:
        return
    key = SCHEMA.get(schema_key(name))
    if key is None:
        raise ConfigError(f"unknown config key {name!r}")
    key.check(name, value)


def check_config(config: Mapping[str, Any]) -> None:
    """Validate every key of a (possibly partial) config."""
    for name, value in config.items():
        check_value(name, value)


def complete(config: Mapping[str, Any]) -> dict[str, Any]:
    """Fill every key `config` leaves out with its default, for the stages and layers it uses.

    Keys for stages beyond `stages` (or dense layers beyond `dense_layers`) are dropped, so the
    result holds exactly what determines the trial. A config with a `backbone` other than
    "none" has the backbone's keys instead of the stage keys; without one it has neither
    (`backbone` itself only when given), so configs from before backbones are unchanged.
    """
    out = {k: v.default for k, v in SCHEMA.items()
           if "#" not in k and k != "backbone" and k not in BACKBONE_KEYS}
    out.update({k: v for k, v in config.items() if "#" not in schema_key(k)})
    if out.get("backbone", "none") != "none":
        out = {k: v for k, v in out.items() if schema_key(k) not in STAGE_KEYS}
        out.update({k: SCHEMA[k].default for k in BACKBONE_KEYS if k not in out})
        return _complete_dense(out, config)
    out = {k: v for k, v in out.items() if k not in BACKBONE_KEYS}
    for s in range(1, out["stages"] + 1):
        for key in ("convs", "dropout"):
            out[f"{key}_{s}"] = config.get(f"{key}_{s}", SCHEMA[f"{key}_#"].default)
    _complete_dense(out, config)
    for name, value in config.items():
        idx = [int(n) for n in re.findall(r"_(\d+)", name)]
        if name.startswith("width_") and idx and idx[0] <= out["stages"]:
            out[name] = value
    return out


def _complete_dense(out: dict[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    for i in range(1, out["dense_layers"] + 1):
        out[f"dense_{i}"] = config.get(f"dense_{i}", SCHEMA["dense_#"].default)
    return out


def read_config(path) -> dict[str, Any]:
    """The trial config in a JSON file, checked key by key; ConfigError naming the file and
    the key otherwise."""
    from hpo.files import read_json_object

    config = read_json_object(path, "config file")
    try:
        check_config(config)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return config
