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
    """One config key: its default, the values it allows, and what it means."""

    default: Any
    allowed: Allowed
    help: str = ""

    def check(self, name: str, value: Any) -> None:
        """Raise ConfigError naming `name` when `value` is not allowed."""
        self.allowed.check(name, value)

    @property
    def choices(self) -> tuple | None:
        """The values a categorical key takes (None for a numeric one)."""
        return self.allowed.choices if isinstance(self.allowed, OneOf) else None


def _int(default, low, high, help=""):
    return Key(default, Range(low, high, whole=True), help)


def _float(default, low, high, help="", positive=False):
    return Key(default, Range(low, high, low_open=positive), help)


def _one_of(default, choices, help=""):
    return Key(default, OneOf(tuple(choices)), help)


def _flag(default, help=""):
    return Key(default, BOOL, help)


# Keys with '#' stand for one key per stage (1..MAX_STAGES) or dense layer (1..MAX_DENSE).
SCHEMA: dict[str, Key] = {
    # run
    "epochs": _int(10, 1, 1000, "epochs of the trial (a space's max_epochs caps it)"),
    "batch_size": _int(256, 1, 8192, "images per optimisation step"),
    "seed": _int(0, 0, 2**31 - 1, "seed of the weights, batches, augmentation and dropout"),
    # architecture: stages of convs, each stage optionally pooled
    "stages": _int(3, 1, MAX_STAGES, "stages of convolutions, each pooled after"),
    "convs_#": _int(2, 1, 3, "convolutions in stage #"),
    "width": _int(64, 1, 2048, "channels of stage 1 when width_# is absent"),
    "growth": _float(2.0, 1.0, 4.0, "width of stage s = width * growth**(s-1)"),
    "width_#": _int(64, 1, 4096, "channels of stage #; overrides width and growth"),
    "width_#_#": _int(64, 1, 4096, "channels of one convolution of one stage"),
    "kernel": _one_of(3, (3, 5), "side of every convolution's kernel"),
    "padding": _one_of("same", ("same", "valid"), "same keeps the size, valid shrinks it"),
    "pool": _one_of("max", ("max", "avg", "conv"), "how a stage halves the size "
                    "(conv: a learned 3x3 stride-2 convolution)"),
    "pool_last": _flag(True, "pool after the last stage too"),
    "activation": _one_of("relu", ACTIVATIONS, "the nonlinearity after each convolution"),
    "bn": _one_of("before", ("none", "before", "after"), "BatchNorm before or after the "
                  "activation, or none"),
    "residual": _flag(False, "a skip connection around each stage"),
    "conv_bias": _flag(True, "convolutions have a bias"),
    "dropout_#": _float(0.0, 0.0, 0.6, "dropout after stage #"),
    "head": _one_of("gap", ("gap", "flatten"), "global average pooling, or flatten, before "
                    "the dense layers"),
    "dense_layers": _int(0, 0, MAX_DENSE, "dense layers before the output layer"),
    "dense_#": _int(256, 1, 8192, "units of dense layer #"),
    "dense_bn": _flag(False, "BatchNorm in the dense layers too (where bn puts it)"),
    "dropout_head": _float(0.0, 0.0, 0.6, "dropout after each dense layer"),
    # a pretrained torchvision network in place of the stages above (hpo/backbone.py)
    "backbone": _one_of("none", ("none", *BACKBONES), "a torchvision network in place of "
                        "the stages (none: hpo's own)"),
    "pretrained": _flag(True, "start from its ImageNet weights, else a random start"),
    "cut": _int(BACKBONE_STAGES, 1, BACKBONE_STAGES, "stages of the backbone kept, from the "
                "input"),
    "frozen": _int(BACKBONE_STAGES, 0, BACKBONE_STAGES, "stages frozen, from the input; "
                   ">= cut: all"),
    "backbone_lr": _float(1.0, 0.0, 10.0, "learning rate of its unfrozen stages, times lr",
                          positive=True),
    "input_size": _int(0, 0, 1024, "images resized to this on the device, a batch at a time "
                       "(0: as decoded)"),
    # augmentation, applied per sample on the device; 0 or False means off
    "aug_flip": _flag(False, "random horizontal flips"),
    "aug_crop": _int(0, 0, 16, "pixels of padding before a random crop (0: off)"),
    "aug_rotate": _float(0.0, 0.0, 180.0, "degrees of random rotation, either way"),
    "aug_zoom": _float(0.0, 0.0, 0.9, "random scale in [1-z, 1+z]"),
    "aug_shear": _float(0.0, 0.0, 60.0, "degrees of random shear"),
    "aug_cutout": _int(0, 0, 64, "side of a random square erased, pixels"),
    "aug_brightness": _float(0.0, 0.0, 1.0, "random brightness change, up to this"),
    "aug_contrast": _float(0.0, 0.0, 1.0, "random contrast change, up to this"),
    "normalize": _flag(True, "per-channel mean/std of the training split"),
    # optimisation
    "optimizer": _one_of("sgd", OPTIMIZERS, "the optimizer (hpo.registry.OPTIMIZERS)"),
    "lr": _float(0.05, 0.0, 10.0, "learning rate", positive=True),
    "momentum": _float(0.9, 0.0, 0.999, "momentum of sgd and rmsprop"),
    "nesterov": _flag(False, "Nesterov momentum (sgd with momentum > 0)"),
    "weight_decay": _float(0.0, 0.0, 0.1, "L2 weight decay"),
    "label_smoothing": _float(0.0, 0.0, 0.5, "label smoothing of the cross-entropy"),
    # learning-rate schedule, stepped per batch (plateau: per epoch on val_loss)
    "schedule": _one_of("constant", SCHEDULES, "the learning rate's shape over the epochs "
                        "(plateau: cut when val_loss stops falling)"),
    "warmup_epochs": _float(0.0, 0.0, 100.0, "epochs of linear warmup first"),
    "step_every": _int(10, 1, 1000, "epochs between decays of the step schedule"),
    "step_gamma": _float(0.1, 0.0, 1.0, "factor of each step decay", positive=True),
    "plateau_patience": _int(5, 0, 1000, "epochs without improvement before plateau cuts"),
    "plateau_factor": _float(0.1, 0.0, 1.0, "factor of each plateau cut", positive=True),
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
