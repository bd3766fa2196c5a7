"""Build a CNN from a config: stages of convs, optional pooling, then a head of dense layers;
or a torchvision backbone (hpo/backbone.py) under the same head.

Every architecture the reports tuned by hand is one config here (spaces/cifar10.py lists them).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from hpo.backbone import build_body
from hpo.errors import Infeasible
from hpo.registry import ACTIVATIONS


def conv_width(config: Mapping[str, Any], s: int, c: int) -> int:
    """Channels of conv `c` of stage `s` (both 1-based): `width_s_c`, else `width_s`, else
    `width * growth**(s-1)`."""
    explicit = config.get(f"width_{s}_{c}", config.get(f"width_{s}"))
    if explicit is not None:
        return int(explicit)
    return max(1, round(config["width"] * config["growth"] ** (s - 1)))


def _norm_act(layers: list, bn: str, width: int, act: str, norm: type[nn.Module]) -> None:
    # "before"/"after" are relative to the activation, as the reports used both orders
    if bn == "before":
        layers.append(norm(width))
    layers.append(getattr(nn, ACTIVATIONS[act])())
    if bn == "after":
        layers.append(norm(width))


class Residual(nn.Module):
    """body(x) + skip(x); the skip is projected by a 1x1 conv when channels change and
    centre-cropped when valid padding shrank the body's output."""

    def __init__(self, body: nn.Module, c_in: int, c_out: int):
        super().__init__()
        self.body = body
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        s = self.skip(x)
        dh, dw = (s.shape[-2] - y.shape[-2]) // 2, (s.shape[-1] - y.shape[-1]) // 2
        if dh or dw:
            s = s[..., dh : dh + y.shape[-2], dw : dw + y.shape[-1]]
        return y + s


def build_model(config: Mapping[str, Any], in_shape: tuple[int, int, int],
                num_classes: int) -> nn.Module:
    """An nn.Sequential for inputs of shape `in_shape` = (C, H, W) and `num_classes` outputs.

    Raises Infeasible when the stack of valid convs and pools would shrink the image
    below what the next layer needs. A config with a `backbone` gets that torchvision
    network, cut and frozen as it says (hpo/backbone.py), under the same head.
    """
    if config.get("backbone", "none") != "none":
        body, (channels, h, w) = build_body(config, in_shape)
        return nn.Sequential(body, *head_layers(config, channels, h, w, num_classes))
    channels, h, w = in_shape
    k, valid, bn = config["kernel"], config["padding"] == "valid", config["bn"]
    act, bias = config["activation"], config["conv_bias"]
    layers: list[nn.Module] = []
    for s in range(1, config["stages"] + 1):
        block: list[nn.Module] = []
        c_in = channels
        for c in range(1, config[f"convs_{s}"] + 1):
            width = conv_width(config, s, c)
            if valid and (h < k or w < k):
                raise Infeasible(f"stage {s} conv {c}: a {k}x{k} valid conv needs at least "
                                 f"{k}x{k} input, has {h}x{w}",
                                 ("padding", "kernel", "stages", f"convs_{s}"),
                                 (k - min(h, w)) / k)
            block.append(nn.Conv2d(channels, width, k, padding=0 if valid else k // 2, bias=bias))
            _norm_act(block, bn, width, act, nn.BatchNorm2d)
            channels = width
            if valid:
                h, w = h - k + 1, w - k + 1
        if config["residual"]:
            layers.append(Residual(nn.Sequential(*block), c_in, channels))
        else:
            layers.extend(block)
        if s < config["stages"] or config["pool_last"]:
            if h < 2 or w < 2:
                raise Infeasible(f"stage {s}: cannot pool a {h}x{w} feature map",
                                 ("stages", "pool_last", "padding"), 1)
            if config["pool"] == "conv":
                # a learned downsampling: 3x3 stride 2, same channels
                layers.append(nn.Conv2d(channels, channels, 3, stride=2, padding=1, bias=bias))
                h, w = (h + 1) // 2, (w + 1) // 2
            else:
                layers.append(nn.MaxPool2d(2) if config["pool"] == "max" else nn.AvgPool2d(2))
                h, w = h // 2, w // 2
        if config[f"dropout_{s}"] > 0:
            layers.append(nn.Dropout(config[f"dropout_{s}"]))
    return nn.Sequential(*layers, *head_layers(config, channels, h, w, num_classes))


def head_layers(config: Mapping[str, Any], channels: int, h: int, w: int,
                num_classes: int) -> list[nn.Module]:
    """The classifier on a `channels` x `h` x `w` feature map: global average pooling or
    flatten, the dense layers, then the output layer."""
    if config["head"] == "gap":
        layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        features = channels
    else:
        layers = [nn.Flatten()]
        features = channels * h * w
    dense_bn = config["bn"] if config["dense_bn"] else "none"
    for i in range(1, config["dense_layers"] + 1):
        width = config[f"dense_{i}"]
        layers.append(nn.Linear(features, width))
        _norm_act(layers, dense_bn, width, config["activation"], nn.BatchNorm1d)
        if config["dropout_head"] > 0:
            layers.append(nn.Dropout(config["dropout_head"]))
        features = width
    layers.append(nn.Linear(features, num_classes))
    return layers


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (BatchNorm's running statistics are buffers, so not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
