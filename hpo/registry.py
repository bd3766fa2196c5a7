"""Every name a config or a space file may use, with what hpo needs to know of it.

Each table here is the one place its names are written: the config schema's choices, the
trainer, the model builder, the memory model, the searcher, `hpo show`, the CLI's help and the
docs all read them from here. Adding an optimizer, a schedule, an activation, a backbone or a
sampler is one entry in one table. No torch, no Optuna: this loads in milliseconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping


# -- optimizers -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Optimizer:
    torch_class: str  # its class in torch.optim
    state: int  # tensors of state it keeps per parameter (hpo.packing's memory model)...
    momentum: bool = False  # takes the config's `momentum` (...plus a buffer when it is > 0)
    nesterov: bool = False  # takes the config's `nesterov`

    def state_tensors(self, config: Mapping[str, Any]) -> int:
        """Tensors of state per parameter under `config`."""
        return self.state + (self.momentum and config.get("momentum", 0) > 0)


OPTIMIZERS: dict[str, Optimizer] = {
    "sgd": Optimizer("SGD", 0, momentum=True, nesterov=True),
    "adam": Optimizer("Adam", 2),
    "adamw": Optimizer("AdamW", 2),
    "rmsprop": Optimizer("RMSprop", 1, momentum=True),
    "adagrad": Optimizer("Adagrad", 1),
    "adadelta": Optimizer("Adadelta", 2),
    "adamax": Optimizer("Adamax", 2),
}


# -- learning-rate schedules ------------------------------------------------------------------
# Each maps (config, the optimisation step, steps per epoch, progress after warmup t in
# [0, 1]) to a multiplier on the base learning rate. Plateau's decays depend on the
# validation loss and are applied per epoch by the trainer; its shape here is flat.
Shape = Callable[[Mapping[str, Any], int, int, float], float]


def _onecycle(config, step, steps_per_epoch, t):
    # up from 0.1x over the first quarter, then linearly down to 0
    return 0.1 + 0.9 * t / 0.25 if t < 0.25 else max(0.0, (1 - t) / 0.75)


SCHEDULES: dict[str, Shape] = {
    "constant": lambda config, step, steps_per_epoch, t: 1.0,
    "step": lambda config, step, steps_per_epoch, t: config["step_gamma"] ** (
        step // (config["step_every"] * steps_per_epoch)),
    "cosine": lambda config, step, steps_per_epoch, t: 0.5 * (1 + math.cos(math.pi * t)),
    "onecycle": _onecycle,
    "plateau": lambda config, step, steps_per_epoch, t: 1.0,
}
PER_EPOCH_SCHEDULES = ("plateau",)  # decided after each epoch's validation


# -- activations ------------------------------------------------------------------------------
ACTIVATIONS: dict[str, str] = {  # name -> its class in torch.nn
    "relu": "ReLU", "elu": "ELU", "gelu": "GELU", "leaky_relu": "LeakyReLU",
}


# -- pretrained backbones -------------------------------------------------------------------
@dataclass(frozen=True)
class Backbone:
    """A torchvision network as five stages, each ending at a stride of the input (hpo.backbone
    cuts them): `stages` is "resnet" (stem+maxpool, layer1..4), "vgg" (the blocks between
    max pools) or five (start, end) slices of the network's `features`."""

    url: str  # torchvision 0.29's default ImageNet weights (get_model_weights(name).DEFAULT.url)
    stages: str | tuple[tuple[int, int], ...]


BACKBONES: dict[str, Backbone] = {
    "resnet18": Backbone("https://download.pytorch.org/models/resnet18-f37072fd.pth", "resnet"),
    "resnet50": Backbone("https://download.pytorch.org/models/resnet50-11ad3fa6.pth", "resnet"),
    "vgg16": Backbone("https://download.pytorch.org/models/vgg16-397923af.pth", "vgg"),
    "efficientnet_b0": Backbone(
        "https://download.pytorch.org/models/efficientnet_b0_rwightman-7f5810bc.pth",
        ((0, 2), (2, 3), (3, 4), (4, 6), (6, 9))),
    "mobilenet_v3_large": Backbone(
        "https://download.pytorch.org/models/mobilenet_v3_large-5c1a4163.pth",
        ((0, 2), (2, 4), (4, 7), (7, 13), (13, 17))),
    "convnext_tiny": Backbone("https://download.pytorch.org/models/convnext_tiny-983f1562.pth",
                              ((0, 1), (1, 2), (2, 4), (4, 6), (6, 8))),
}
BACKBONE_STAGES = 5


# -- samplers --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sampler:
    description: str
    optuna_class: str  # in optuna.samplers
    multivariate: bool = False  # TPE over the joint distribution of dimensions drawn together


SAMPLERS: dict[str, Sampler] = {
    "tpe": Sampler("univariate TPE, a constant liar for trials still running (the default)",
                   "TPESampler"),
    "tpe-multivariate": Sampler("TPE over the joint distribution of dimensions drawn together "
                                "(multivariate=True, group=True), with a constant liar",
                                "TPESampler", multivariate=True),
    "gp": Sampler("Optuna's Gaussian-process sampler (learns from completed trials only)",
                  "GPSampler"),
    "random": Sampler("uniform random draws (with ASHA: random search + early stopping)",
                      "RandomSampler"),
}


# -- metrics ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Metric:
    mode: str  # "max" or "min": which way is better
    per_epoch: bool  # reported every epoch: may rank the leaderboard and drive ASHA


METRICS: dict[str, Metric] = {
    "val_acc": Metric("max", per_epoch=True),
    "val_loss": Metric("min", per_epoch=True),
    "params": Metric("min", per_epoch=False),  # trainable parameters: a second objective
}
MODES = ("max", "min")


def sign(mode: str) -> int:
    """+1 where larger is better ("max"), -1 where smaller is: sign * value ranks either way."""
    return 1 if mode == "max" else -1


def best_of(values, mode: str):
    """The best of `values` under `mode` (None when there are none)."""
    values = list(values)
    return max(values, key=lambda v: sign(mode) * v) if values else None


# -- experiment trackers (--log) -------------------------------------------------------------
@dataclass(frozen=True)
class Tracker:
    module: str  # what Ray Tune's logger callback for it imports
    extra: str  # hpo's pip extra that installs it
    where: str  # where the runs go


TRACKERS: dict[str, Tracker] = {
    "mlflow": Tracker("mlflow", "mlflow", "MLFLOW_TRACKING_URI, default <results>/mlflow.db"),
    "wandb": Tracker("wandb", "wandb", "--wandb-project or WANDB_PROJECT"),
}
