"""Pretrained torchvision networks as the body of a trial's model: cut, frozen, their weights.

Every backbone is seen as five stages, each ending at a stride of the input (the "cut" points):

    backbone            stage 1            2          3          4           5
    resnet18/50         stem + maxpool /4  layer1 /4  layer2 /8  layer3 /16  layer4 /32
    vgg16               block1 /2          block2 /4  block3 /8  block4 /16  block5 /32
    efficientnet_b0     features 0-1 /2    2 /4       3 /8       4-5 /16     6-8 /32
    mobilenet_v3_large  features 0-1 /2    2-3 /4     4-6 /8     7-12 /16    13-16 /32
    convnext_tiny       stem /4            stage1 /4  stage2 /8  stage3 /16  stage4 /32

A config keeps stages 1..`cut` and freezes stages 1..`frozen` (all of them when frozen >= cut):
frozen stages get no gradients, no optimizer state and stay in eval mode (BatchNorm keeps its
ImageNet statistics, stochastic depth is off), and run without autograd. Images are resized to
`input_size` on the device, a batch at a time, and pretrained weights see ImageNet's mean/std.

Weights are read from a file, never downloaded during a search: the folder of --weights-dir
(exported as $HPO_WEIGHTS_DIR, so trial processes see it), else torchvision's own cache
(torch.hub.get_dir()/checkpoints, under $TORCH_HOME), under the name torchvision gives the
file. `check_weights` refuses a search whose space needs a file that is in neither.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from hpo.errors import Infeasible, WeightsError
from hpo.registry import BACKBONES
from hpo.weights import find_weights, missing_message

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
REFERENCE_PIXELS = 32 * 32  # evaluation batches are sized for 32x32 inputs (train.EVAL_BATCH)


def _groups(*bounds: tuple[int, int]) -> Callable[[nn.Module], list[nn.Module]]:
    # torchvision keeps these networks' layers in one `features` Sequential: slice it
    return lambda net: [net.features[a:b] for a, b in bounds]


def _resnet(net: nn.Module) -> list[nn.Module]:
    return [nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool),
            net.layer1, net.layer2, net.layer3, net.layer4]


def _vgg(net: nn.Module) -> list[nn.Module]:
    ends = [i + 1 for i, m in enumerate(net.features) if isinstance(m, nn.MaxPool2d)]
    return [net.features[a:b] for a, b in zip([0, *ends], ends)]


def stages(name: str, net: nn.Module) -> list[nn.Module]:
    """The five stages of backbone `name` (hpo.registry.BACKBONES) in its torchvision model."""
    layout = BACKBONES[name].stages
    if layout == "resnet":
        return _resnet(net)
    if layout == "vgg":
        return _vgg(net)
    return _groups(*layout)(net)


class Backbone(nn.Module):
    """Stages run in order; the first `frozen` are fixed: no gradients, eval mode always."""

    def __init__(self, stages: list[nn.Module], frozen: int):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.frozen = frozen
        for stage in self.stages[:frozen]:
            stage.requires_grad_(False)
        self.train()

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        for stage in self.stages[: self.frozen]:
            stage.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, stage in enumerate(self.stages):
            if i < self.frozen:
                with torch.no_grad():  # nothing to differentiate: keep no activations
                    x = stage(x)
            else:
                x = stage(x)
        return x


def uses_backbone(config: Mapping[str, Any]) -> bool:
    return config.get("backbone", "none") != "none"


def input_shape(config: Mapping[str, Any], image_shape: tuple[int, int, int]
                ) -> tuple[int, int, int]:
    """(C, H, W) of the batches the model sees: the images' own for hpo's CNNs; for a
    backbone, 3 channels at `input_size` (the images' size when 0)."""
    if not uses_backbone(config):
        return tuple(image_shape)
    size = config["input_size"]
    return (3, size, size) if size else (3, *image_shape[1:])


def eval_batch(config: Mapping[str, Any], image_shape: tuple[int, int, int], full: int) -> int:
    """Images per forward pass without gradients: `full` for hpo's CNNs, fewer for a backbone
    seeing larger images (as many pixels as `full` images of 32x32)."""
    if not uses_backbone(config):
        return full
    _, h, w = input_shape(config, image_shape)
    return max(1, min(full, full * REFERENCE_PIXELS // (h * w)))


def build_body(config: Mapping[str, Any], image_shape: tuple[int, int, int]
               ) -> tuple[Backbone, tuple[int, int, int]]:
    """The config's backbone, cut and frozen, with its pretrained weights loaded (not on the
    meta device, where only shapes matter), and the (C, H, W) of its output.

    Raises Infeasible when the input is too small for the stages kept, WeightsError when
    the weights file is missing.
    """
    name, cut = config["backbone"], config["cut"]
    shape = input_shape(config, image_shape)
    out = _output_shape(name, cut, shape)
    from torchvision.models import get_model

    if config["pretrained"] and torch.get_default_device().type != "meta":
        with torch.device("meta"):  # no random init of weights about to be replaced
            net = get_model(name)
        net.load_state_dict(load_weights(name), assign=True)
    else:
        net = get_model(name)
    body = Backbone(stages(name, net)[:cut], min(config["frozen"], cut))
    return body, out


@lru_cache(maxsize=256)
def _output_shape(name: str, cut: int, shape: tuple[int, int, int]) -> tuple[int, int, int]:
    from torchvision.models import get_model

    with torch.device("meta"):
        body = nn.Sequential(*stages(name, get_model(name))[:cut]).eval()
        try:
            y = body(torch.empty(1, *shape))
        except RuntimeError as exc:
            raise Infeasible(f"{name} cut after stage {cut} cannot take {shape[1]}x{shape[2]} "
                             f"input: {str(exc).splitlines()[0]}") from None
    return tuple(y.shape[1:])


def frozen_modules(model: nn.Module) -> list[nn.Module]:
    """The frozen stages of a model build_model made (none for hpo's CNNs)."""
    body = model[0] if isinstance(model, nn.Sequential) and len(model) else None
    return list(body.stages[: body.frozen]) if isinstance(body, Backbone) else []


def param_groups(model: nn.Module, config: Mapping[str, Any]) -> Iterable:
    """What the optimizer trains: every parameter for hpo's CNNs; for a backbone, the head's
    at `lr` and the unfrozen stages' at `lr * backbone_lr` (frozen ones not at all)."""
    if not uses_backbone(config):
        return model.parameters()
    groups = [{"params": [p for p in model[1:].parameters() if p.requires_grad],
               "lr": config["lr"]}]
    body = [p for p in model[0].parameters() if p.requires_grad]
    if body:  # a space may leave backbone_lr out where everything is frozen
        groups.append({"params": body, "lr": config["lr"] * config["backbone_lr"]})
    return groups


_STATS: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def prepare_input(x: torch.Tensor, config: Mapping[str, Any], mean: torch.Tensor,
                  std: torch.Tensor) -> torch.Tensor:
    """A batch in [0, 1] (after augmentation) as a backbone takes it: 3 channels, normalised
    (ImageNet's statistics for pretrained weights; `mean`/`std`, the training split's, when
    trained from scratch with `normalize`), resized to `input_size`."""
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if config["pretrained"]:
        key = (x.device, x.dtype)
        if key not in _STATS:  # made once per device: a host-to-device copy per batch syncs
            _STATS[key] = tuple(torch.tensor(v, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
                                for v in (IMAGENET_MEAN, IMAGENET_STD))
        mean, std = _STATS[key]
        x = (x - mean) / std
    elif config["normalize"]:
        x = (x - mean.to(x.dtype)) / std.to(x.dtype)
    size = config["input_size"]
    if size and tuple(x.shape[-2:]) != (size, size):
        # normalised first: a per-channel affine map commutes with interpolation and costs
        # less before an enlargement. Antialiased shrinking has no bf16 kernel on some
        # backends (the CPU's), so it runs in fp32 there.
        shrink = size < max(x.shape[-2:])
        work = x.float() if shrink and x.dtype not in (torch.float32, torch.float64) else x
        x = F.interpolate(work, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=shrink).to(x.dtype)
    return x


def load_weights(name: str) -> dict[str, torch.Tensor]:
    """The ImageNet state dict of backbone `name`, from its file; WeightsError if missing."""
    path = find_weights(name)
    if path is None:
        raise WeightsError(missing_message(name))
    return torch.load(path, map_location="cpu", weights_only=True)
