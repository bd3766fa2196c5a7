"""How many trials share one GPU: each trial gets the fraction of a GPU its memory needs.

A trial's need is predicted from its config (the activations a training step keeps, counted on
PyTorch's meta device, plus weights, gradients and optimizer state), scaled by a ratio that
measurement keeps honest: a probe of a few configs on a real GPU before the search, then every
trial's own peak as it runs. The fraction is 1/k for the largest k (up to `max_per_gpu`) whose
k trials fit in the GPU's memory, so Ray never places more trials on a GPU than its memory holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from hpo.backbone import eval_batch, frozen_modules, input_shape
from hpo.data import Dataset
from hpo.device import EVAL_BATCH
from hpo.errors import Infeasible
from hpo.model import build_model
from hpo.registry import OPTIMIZERS

# per trial process, outside PyTorch's allocator: the CUDA context, cuBLAS/cuDNN handles
CONTEXT_BYTES = 1 << 30


def predict_bytes(config: Mapping[str, Any], image_shape: tuple[int, int, int],
                  num_classes: int) -> int:
    """An uncalibrated count of the bytes training `config` holds beyond the dataset: every
    leaf module's output at the config's batch size in bf16 (what backward keeps), or an
    evaluation batch's largest layers if more, and fp32 weights, gradients and optimizer
    state. A backbone's frozen stages keep no activations (their largest output is alive
    for a moment) and have fp32 weights only; its batches are counted at its input size.
    Built on the meta device: no memory, milliseconds.
    Raises Infeasible for a config that cannot be built."""
    # eval mode and no autograd: the same output shapes, and BatchNorm's training path on the
    # meta device costs seconds (Python decompositions), eval's a few milliseconds
    with torch.device("meta"), torch.no_grad():
        model = build_model(config, image_shape, num_classes).eval()
        frozen = {id(m) for stage in frozen_modules(model) for m in stage.modules()}
        sizes: list[int] = []
        transient: list[int] = []  # outputs of frozen layers: computed without autograd

        def count(module: nn.Module, args, output) -> None:
            if isinstance(output, torch.Tensor):
                (transient if id(module) in frozen else sizes).append(output.numel())

        hooks = [m.register_forward_hook(count) for m in model.modules()
                 if not any(True for _ in m.children())]
        model(torch.empty(config["batch_size"], *input_shape(config, image_shape)))
        for hook in hooks:
            hook.remove()
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    fixed = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    slots = OPTIMIZERS[config["optimizer"]].state_tensors(config)  # fp32 values each
    training = sum(sizes) + 2 * max(transient, default=0)
    # evaluation keeps no activations for backward, but runs batches of EVAL_BATCH (fewer
    # for a backbone's larger inputs): a layer's input and output (and a temporary) are
    # alive at once
    evaluation = (3 * max(sizes + transient, default=0)
                  * eval_batch(config, image_shape, EVAL_BATCH) // config["batch_size"])
    return 2 * max(training, evaluation) + 4 * params * (2 + slots) + 4 * fixed


def device_bytes(data: Dataset) -> int:
    """Bytes of `data` a trial keeps on its GPU (train.to_device): the uint8 images of the
    training and validation splits, and their labels as int64."""
    return (data.x_train.nbytes + data.x_val.nbytes
            + 8 * (len(data.y_train) + len(data.y_val)))


@dataclass
class Packer:
    """Fractions of a GPU per trial, from predicted needs calibrated by measured peaks."""

    gpu_bytes: int  # memory of one GPU
    data_bytes: int  # the dataset copy every trial process keeps on its GPU
    image_shape: tuple[int, int, int]
    num_classes: int
    max_per_gpu: int = 4
    ratio: float = 1.0  # measured / predicted, the largest seen
    margin: float = 1.25  # head room over the calibrated prediction
    context_bytes: int = CONTEXT_BYTES
    _predicted: dict[str, int] = field(default_factory=dict, repr=False)

    def predicted(self, config: Mapping[str, Any]) -> int:
        """predict_bytes for `config`, cached; 0 for an infeasible one."""
        key = repr(sorted(config.items()))
        if key not in self._predicted:
            try:
                self._predicted[key] = predict_bytes(config, self.image_shape, self.num_classes)
            except Infeasible:
                self._predicted[key] = 0  # it stops before touching the GPU
        return self._predicted[key]

    def observe(self, config: Mapping[str, Any], measured: int, data_bytes: int | None = None):
        """Learn from a measured peak: `measured` bytes reserved by training `config`, of which
        `data_bytes` (default: this study's dataset) were the dataset."""
        predicted = self.predicted(config)
        if predicted:
            model_part = measured - (self.data_bytes if data_bytes is None else data_bytes)
            self.ratio = max(self.ratio, model_part / predicted)

    def need(self, config: Mapping[str, Any]) -> int:
        """Bytes of GPU memory a trial of `config` is expected to hold at its peak."""
        model_part = self.margin * self.ratio * self.predicted(config)
        return int(self.context_bytes + self.data_bytes + model_part)

    def fraction(self, config: Mapping[str, Any]) -> float:
        """The share of one GPU to ask Ray for: 1/k, k trials of this need fitting in memory.
        A config that needs more than a whole GPU gets one (and is likely to end as "oom")."""
        k = max(1, min(self.max_per_gpu, self.gpu_bytes // max(1, self.need(config))))
        return 1 / k
