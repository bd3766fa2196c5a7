"""The trial config schema: every key a trial reads, its default and its allowed values.

A config is a flat, JSON-serialisable dict. Per-stage and per-layer keys carry their index
(`convs_2`, `width_3`, `dropout_1`, `dense_2`), so every key is one leaderboard column.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

MAX_STAGES = 5
MAX_DENSE = 3
# torchvision networks a config may start from (hpo/backbone.py says how each is cut in stages)
BACKBONES = ("resnet18", "resnet50", "vgg16", "efficientnet_b0", "mobilenet_v3_large",
             "convnext_tiny")
BACKBONE_STAGES = 5


@dataclass(frozen=True)
class Key:
    """One config key: a default, and either allowed `choices` or a numeric [low, high] range."""

    default: Any
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    integer: bool = False
    positive: bool = False  # strictly above `low`

    def check(self, name: str, value: Any) -> None:
        """Raise ValueError naming `name` when `value` is not allowed."""
        if self.choices is not None:
            if value not in self.choices or isinstance(value, bool) != isinstance(
                self.choices[0], bool
            ):
                raise ValueError(f"{name} must be one of {list(self.choices)}, got {value!r}")
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number, got {value!r}")
        if self.integer and int(value) != value:
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        if not math.isfinite(value) or value < self.low or value > self.high or (
            self.positive and value <= self.low
        ):
            bracket = "(" if self.positive else "["
            raise ValueError(f"{name} must be in {bracket}{self.low}, {self.high}], got {value!r}")


def _int(default, low, high):
    return Key(default, low=low, high=high, integer=True)


def _float(default, low, high, positive=False):
    return Key(default, low=low, high=high, positive=positive)


BOOL = (False, True)

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
    "kernel": Key(3, choices=(3, 5)),
    "padding": Key("same", choices=("same", "valid")),
    "pool": Key("max", choices=("max", "avg", "conv")),
    "pool_last": Key(True, choices=BOOL),
    "activation": Key("relu", choices=("relu", "elu", "gelu", "leaky_relu")),
    "bn": Key("before", choices=("none", "before", "after")),  # relative to the activation
    "residual": Key(False, choices=BOOL),
    "conv_bias": Key(True, choices=BOOL),
    "dropout_#": _float(0.0, 0.0, 0.6),  # after stage #
    "head": Key("gap", choices=("gap", "flatten")),
    "dense_layers": _int(0, 0, MAX_DENSE),
    "dense_#": _int(256, 1, 8192),
    "dense_bn": Key(False, choices=BOOL),
    "dropout_head": _float(0.0, 0.0, 0.6),  # after each dense layer
    # a pretrained torchvision network in place of the stages above (hpo/backbone.py)
    "backbone": Key("none", choices=("none", *BACKBONES)),
    "pretrained": Key(True, choices=BOOL),  # ImageNet weights, else a random start
    "cut": _int(BACKBONE_STAGES, 1, BACKBONE_STAGES),  # stages kept, from the input
    "frozen": _int(BACKBONE_STAGES, 0, BACKBONE_STAGES),  # stages frozen; >= cut: all
    "backbone_lr": _float(1.0, 0.0, 10.0, positive=True),  # x lr for its unfrozen stages
    "input_size": _int(0, 0, 1024),  # images resized on the device per batch; 0: as decoded
    # augmentation, applied per sample on the device; 0 or False means off
    "aug_flip": Key(False, choices=BOOL),
    "aug_crop": _int(0, 0, 16),  # pixels of padding before the random crop
    "aug_rotate": _float(0.0, 0.0, 180.0),  # degrees, uniform in +-
    "aug_zoom": _float(0.0, 0.0, 0.9),  # scale uniform in [1-z, 1+z]
    "aug_shear": _float(0.0, 0.0, 60.0),  # degrees
    "aug_cutout": _int(0, 0, 64),  # side of the erased square, pixels
    "aug_brightness": _float(0.0, 0.0, 1.0),
    "aug_contrast": _float(0.0, 0.0, 1.0),
    "normalize": Key(True, choices=BOOL),  # per-channel mean/std of the training split
    # optimisation
    "optimizer": Key(
        "sgd", choices=("sgd", "adam", "adamw", "rmsprop", "adagrad", "adadelta", "adamax")
    ),
    "lr": _float(0.05, 0.0, 10.0, positive=True),
    "momentum": _float(0.9, 0.0, 0.999),  # sgd and rmsprop
    "nesterov": Key(False, choices=BOOL),  # sgd with momentum > 0
    "weight_decay": _float(0.0, 0.0, 0.1),
    "label_smoothing": _float(0.0, 0.0, 0.5),
    # learning-rate schedule, stepped per batch (plateau: per epoch on val_loss)
    "schedule": Key("constant", choices=("constant", "step", "cosine", "onecycle", "plateau")),
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
    """Raise ValueError when `name` is not a config key or `value` is out of its range."""
    if name in LABELS:
        return
    key = SCHEMA.get(schema_key(name))
    if key is None:
        raise ValueError(f"unknown config key {name!r}")
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
    """The trial config in a JSON file, checked key by key; ValueError naming the file and
    the key otherwise."""
    from hpo.files import read_json_object

    config = read_json_object(path, "config file")
    try:
        check_config(config)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return config
