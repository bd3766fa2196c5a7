"""The exported model: a trained network with the trials' preprocessing inside, from uint8
images as image decoders produce them to class probabilities.

Input `images`: uint8 [N, H, W, C], channels last, any H and W, C = 1 (L), 2 (LA), 3 (RGB) or
4 (RGBA). Output `probabilities`: float32 [N, K], a softmax over the classes.

In between, each image goes through what a trial's image went through:

1. what hpo.sources did with PIL when it decoded the training images: the dataset's mode (RGB,
   or L by PIL's own integer luma; alpha dropped, L repeated, as PIL's convert does), then a
   bilinear resize to the size the trials saw (exactly a no-op for an image already that
   size, which is what hpo predict feeds it: it decodes with hpo's own PIL code);
2. hpo.train.preprocess as evaluation ran it on the CPU (float32, no augmentation): /255,
   then the training split's per-channel normalisation, or hpo.backbone.prepare_input for a
   pretrained backbone (3 channels, ImageNet's statistics, resized to `input_size`);
3. the network in eval mode, then a softmax.

An `Ensemble` holds several of them (one study's, so they decode alike) and outputs the mean
of their probabilities: the same input and output.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hpo.device import preprocess

# Pillow's RGB -> L (its L24 macro): ITU-R 601-2 luma, R*299/1000 + G*587/1000 + B*114/1000,
# in 16-bit fixed point with rounding. In float32 every term and sum is an integer below 2**24,
# so the graph computes PIL's values exactly.
LUMA = (19595, 38470, 7471)
LUMA_SHIFT = 65536


def resize_like_pil(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Float images [N, C, H, W] holding uint8 values, resized to `size` (H, W) as PIL's
    Image.resize(size, BILINEAR) resizes uint8 images: PIL's triangle filter, widened by the
    scale when shrinking (torch's antialias computes PIL's weights), the horizontal pass
    first, each pass rounded half up to 0..255 as PIL stores it. Identical for the size the
    trials saw; otherwise PIL's fixed-point sums (and, in Pillow 13, its own choice of pass
    order for some sizes) leave values 1 apart: 74-100% equal on noise images of the sizes in
    tests/test_export.py, none further apart."""
    h, w = size
    for step in ((x.shape[-2], w), (h, w)):
        x = F.interpolate(x, size=step, mode="bilinear", align_corners=False,
                          antialias=True).add(0.5).floor().clamp(0, 255)
    return x


class ImageClassifier(nn.Module):
    """`model` (hpo.model.build_model's, trained) behind the preprocessing its trials used:
    uint8 [N, H, W, C] images in, softmax probabilities [N, K] out (see the module's doc).

    `image_shape` is (C, H, W) of the images hpo decoded for the trials; `mean` and `std` are
    the per-channel statistics their batches were normalised with ([1, C, 1, 1] tensors, as
    hpo.train.to_device makes them: the training split's, or train+val's for a retrain).
    """

    def __init__(self, model: nn.Module, config: Mapping[str, Any],
                 image_shape: Sequence[int], mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.model = model.eval()
        self.config = dict(config)
        self.channels, self.height, self.width = (int(v) for v in image_shape)
        self.register_buffer("mean", mean.detach().float().cpu().clone())
        self.register_buffer("std", std.detach().float().cpu().clone())
        self.eval().requires_grad_(False)  # inference only: outputs carry no autograd graph

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classify(self.decoded(images))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities [N, K] of images already `decoded`, uint8 [N, C, H, W]."""
        # preprocess reads only the statistics of its DeviceData: this module holds them
        x = preprocess(x, self, self.config, torch.float32)
        return torch.softmax(self.model(x), dim=1)

    def decoded(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N, H, W, C] -> uint8 [N, C', H', W'] as hpo.sources would have decoded
        them for the trials: their mode, then their size."""
        # channel indices 0,0,0 for L and LA, 0,1,2 for RGB and RGBA: a gather that works for
        # any C without a branch on the input's shape, which an exported graph cannot keep
        pick = torch.arange(3, device=images.device) * (images.shape[-1] // 3)
        x = images.index_select(3, pick).permute(0, 3, 1, 2).float()
        if self.channels == 1:
            r, g, b = x.split(1, dim=1)
            x = torch.floor((r * LUMA[0] + g * LUMA[1] + b * LUMA[2] + LUMA_SHIFT // 2)
                            / LUMA_SHIFT)
        return resize_like_pil(x, (self.height, self.width)).to(torch.uint8)


class Ensemble(nn.Module):
    """ImageClassifiers of one study as one model, with their input and output: uint8
    [N, H, W, C] images in, the mean of the members' softmax probabilities [N, K] out.

    Each member keeps its own config's preprocessing (normalisation, a backbone's resize);
    the images are decoded once, as the study decoded them for every member alike. Raises
    ValueError for no members, or members that decode to different shapes (other studies).
    """

    def __init__(self, members: Sequence[ImageClassifier]):
        super().__init__()
        shapes = {(m.channels, m.height, m.width) for m in members}
        if len(shapes) != 1:
            raise ValueError(f"an ensemble's members must decode images alike, got {shapes}")
        self.members = nn.ModuleList(members)
        (self.channels, self.height, self.width), = shapes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.members[0].decoded(images)
        return torch.stack([m.classify(x) for m in self.members]).mean(0)
