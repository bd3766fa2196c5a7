"""The data on a trial's device: the uint8 training and validation images, decoded once
(hpo.data), copied to the device once per process, and turned into model input a batch at a
time (augmented when training, then normalised or prepared for a backbone).

Both the trial's epoch loop (hpo.train) and a frozen backbone's feature cache (hpo.features)
read batches through here, so their preprocessing is one piece of code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from hpo.augment import augment
from hpo.backbone import prepare_input, uses_backbone
from hpo.data import Dataset, channel_stats

EVAL_BATCH = 2048  # large: evaluation has no backward pass to hold memory for


@dataclass
class DeviceData:
    """The training and validation splits as tensors on one device, plus input statistics."""

    x_train: torch.Tensor  # uint8 [N, C, H, W]
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    mean: torch.Tensor  # [1, C, 1, 1], in [0, 1] units
    std: torch.Tensor
    num_classes: int


# A reused worker process keeps the last dataset on its device, so consecutive trials of one
# study copy it from the host once. One entry only: a long-lived worker must not pile up copies.
_device_cache: dict[tuple[str, str], DeviceData] = {}


def to_device(data: Dataset, device: torch.device) -> DeviceData:
    """`data`'s train and val splits on `device` (cached per process by fingerprint)."""
    key = (data.fingerprint, str(device))
    if key not in _device_cache:
        _device_cache.clear()

        def put(a):
            return torch.as_tensor(a.copy() if not a.flags.writeable else a).to(device)

        # statistics of the training split only (validation must stay unseen), on the host
        # in chunks: a float64 copy of the split on the GPU would cost gigabytes
        mean, std = channel_stats(data.x_train)
        _device_cache[key] = DeviceData(
            x_train=put(data.x_train),
            y_train=put(data.y_train).long(),
            x_val=put(data.x_val),
            y_val=put(data.y_val).long(),
            mean=torch.tensor(mean, device=device).view(1, -1, 1, 1),
            std=torch.tensor(std, device=device).clamp_min(1e-3).view(1, -1, 1, 1),
            num_classes=data.num_classes,
        )
    return _device_cache[key]


def preprocess(x: torch.Tensor, dev: DeviceData, config: Mapping[str, Any], dtype: torch.dtype,
               generator: torch.Generator | None = None, train: bool = False) -> torch.Tensor:
    """uint8 images -> augmented (when `train`), normalised float batch in `dtype` (resized
    for a backbone); float input is features a frozen backbone made (hpo.features) as is."""
    if x.is_floating_point():
        return x.to(dtype)
    x = x.to(dtype) / 255
    if train:
        x = augment(x, config, generator)
    if uses_backbone(config):
        x = prepare_input(x, config, dev.mean, dev.std)
    elif config["normalize"]:
        x = (x - dev.mean.to(dtype)) / dev.std.to(dtype)
    if x.is_cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


