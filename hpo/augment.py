"""Batched, loop-free image augmentation on device-resident tensors [N, C, H, W] in [0, 1].

Every op draws its parameters per sample; the config uses flat `aug_*` keys so a search space
can tune each magnitude independently, and a missing or zero key disables the op at no cost.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from hpo.config import SCHEMA

# every augmentation key with its "off" value; ranges are checked with the rest of the config
AUG_DEFAULTS: dict[str, object] = {k: v.default for k, v in SCHEMA.items() if k.startswith("aug_")}


def _uniform(n: int, gen: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """n float32 draws in [0, 1), made on the generator's device and moved to `device`."""
    src = gen.device if gen is not None else device
    return torch.rand(n, generator=gen, device=src).to(device)


def _randint(
    high: int, n: int, gen: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    src = gen.device if gen is not None else device
    return torch.randint(0, high, (n,), generator=gen, device=src).to(device)


def _reflect(idx: torch.Tensor, size: int) -> torch.Tensor:
    """Map any integer index into [0, size) the way reflect padding does (edge not repeated).

    Folding indices instead of calling F.pad keeps the crop valid even when the shift is as
    large as the image, where F.pad(mode="reflect") would raise.
    """
    if size == 1:
        return torch.zeros_like(idx)
    period = 2 * (size - 1)
    idx = idx.abs() % period
    return torch.where(idx >= size, period - idx, idx)


def _crop(x: torch.Tensor, pad: int, gen: torch.Generator | None) -> torch.Tensor:
    n, c, h, w = x.shape
    dy = _randint(2 * pad + 1, n, gen, x.device) - pad
    dx = _randint(2 * pad + 1, n, gen, x.device) - pad
    rows = _reflect(torch.arange(h, device=x.device)[None, :] + dy[:, None], h)
    cols = _reflect(torch.arange(w, device=x.device)[None, :] + dx[:, None], w)
    # Two gathers (rows, then columns) shift every sample by its own offset in one kernel each.
    x = x.gather(2, rows[:, None, :, None].expand(n, c, h, w))
    return x.gather(3, cols[:, None, None, :].expand(n, c, h, w))


def _affine(
    x: torch.Tensor, rotate: float, zoom: float, shear: float, gen: torch.Generator | None
) -> torch.Tensor:
    n, _, h, w = x.shape
    dev = x.device
    theta_r = math.radians(rotate) * (2 * _uniform(n, gen, dev) - 1)
    shear_t = torch.tan(math.radians(shear) * (2 * _uniform(n, gen, dev) - 1))
    scale = 1 + zoom * (2 * _uniform(n, gen, dev) - 1)
    cos, sin = torch.cos(theta_r), torch.sin(theta_r)
    # affine_grid maps output -> input, so build the inverse of (rotate @ shear @ scale) directly.
    a00, a01 = (cos + shear_t * sin) / scale, (sin - shear_t * cos) / scale
    a10, a11 = -sin / scale, cos / scale
    # Normalised coords span [-1, 1] on both axes; rescale off-diagonals so a non-square image
    # is rotated/sheared in pixel space rather than squashed.
    zero = torch.zeros_like(a00)
    theta = torch.stack(
        [torch.stack([a00, a01 * (h / w), zero], 1), torch.stack([a10 * (w / h), a11, zero], 1)], 1
    )
    # grid_sample lacks (or is imprecise in) half-precision kernels on some backends.
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    grid = F.affine_grid(theta.to(work.dtype), list(work.shape), align_corners=False)
    out = F.grid_sample(work, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.to(x.dtype)


def augment(
    x: torch.Tensor, config: Mapping[str, Any], generator: torch.Generator | None = None
) -> torch.Tensor:
    """Augment a batch `x` [N, C, H, W] of floats in [0, 1] (any device, C, H, W, float dtype).

    Returns a tensor of the same shape, dtype and device with values in [0, 1]. Ops run in the
    order flip, crop, affine (rotate/zoom/shear in one grid_sample), brightness, contrast,
    cutout, then a clamp; each draws its random parameters per sample. Missing or off keys cost
    nothing, and with every op off `x` itself is returned. `config` is not validated here (hot
    path); hpo.config.check_config checks ranges once, when the space file loads.

    Random draws are made on `generator.device` (or on x.device when `generator` is None) and
    moved to x.device, so a CPU generator works for CUDA input and the same seed gives the same
    parameters whichever device `x` is on.
    """

    def get(key: str) -> Any:
        return config.get(key, AUG_DEFAULTS[key]) or 0

    n, dev = x.shape[0], x.device
    out = x
    if get("aug_flip"):
        flip = (_uniform(n, generator, dev) < 0.5)[:, None, None, None]
        out = torch.where(flip, out.flip(-1), out)
    if get("aug_crop"):
        out = _crop(out, int(get("aug_crop")), generator)
    rotate, zoom, shear = float(get("aug_rotate")), float(get("aug_zoom")), float(get("aug_shear"))
    if rotate or zoom or shear:
        out = _affine(out, rotate, zoom, shear, generator)
    if get("aug_brightness"):
        offset = float(get("aug_brightness")) * (2 * _uniform(n, generator, dev) - 1)
        out = out + offset.to(x.dtype)[:, None, None, None]
    if get("aug_contrast"):
        factor = 1 + float(get("aug_contrast")) * (2 * _uniform(n, generator, dev) - 1)
        # Mean over C, H, W in float32: a bf16 accumulation over a whole image drifts visibly.
        mean = out.mean(dim=(1, 2, 3), keepdim=True, dtype=torch.float32).to(x.dtype)
        out = (out - mean) * factor.to(x.dtype)[:, None, None, None] + mean
    if get("aug_cutout"):
        side = int(get("aug_cutout"))
        h, w = x.shape[-2:]
        y0 = _randint(h, n, generator, dev) - side // 2
        x0 = _randint(w, n, generator, dev) - side // 2
        ys = torch.arange(h, device=dev)[None, :] - y0[:, None]
        xs = torch.arange(w, device=dev)[None, :] - x0[:, None]
        in_y = ((ys >= 0) & (ys < side))[:, None, :, None]
        in_x = ((xs >= 0) & (xs < side))[:, None, None, :]
        out = out.masked_fill(in_y & in_x, 0.5)
    return out if out is x else out.clamp_(0.0, 1.0)
