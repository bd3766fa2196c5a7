"""Tests for hpo.augment: contract (shape/dtype/range), per-sample randomness, seeding, bf16."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hpo.augment import AUG_DEFAULTS, augment
from hpo.config import check_config

# One non-zero magnitude per op, large enough that per-sample draws visibly differ.
OPS = {
    "aug_flip": True,
    "aug_crop": 4,
    "aug_rotate": 30.0,
    "aug_zoom": 0.3,
    "aug_shear": 20.0,
    "aug_cutout": 8,
    "aug_brightness": 0.3,
    "aug_contrast": 0.5,
}
SHAPES = [(8, 3, 32, 32), (8, 1, 28, 28), (4, 3, 40, 24)]


def _images(shape: tuple[int, ...], seed: int = 0, dtype: torch.dtype = torch.float32):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_ops_cover_every_default_key():
    # Every key in AUG_DEFAULTS is exercised by the parametrised tests below.
    assert set(OPS) == set(AUG_DEFAULTS)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("op", [*OPS, "all"])
def test_shape_dtype_device_and_range_kept(op, shape):
    x = _images(shape)
    config = OPS if op == "all" else {op: OPS[op]}
    out = augment(x, config, _gen(1))
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("op", list(OPS))
def test_parameters_are_drawn_per_sample(op):
    img = _images((1, 3, 32, 32))
    x = img.expand(16, -1, -1, -1).contiguous()
    out = augment(x, {op: OPS[op]}, _gen(2))
    # Identical inputs must not all map to the same output: one draw per sample, not per batch.
    assert any(not torch.equal(out[i], out[0]) for i in range(1, 16))
    if op == "aug_flip":
        flipped = [torch.equal(o, img[0].flip(-1)) for o in out]
        kept = [torch.equal(o, img[0]) for o in out]
        # Each sample is either flipped or untouched, and both outcomes occur in 16 draws.
        assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)


def test_all_ops_off_returns_input_unchanged():
    x = _images((8, 3, 32, 32))
    assert torch.equal(augment(x, {}), x)
    assert torch.equal(augment(x, AUG_DEFAULTS), x)
    # Non-augmentation keys in a flat trial config are ignored.
    assert torch.equal(augment(x, {"lr": 0.1, "batch_size": 128}), x)


def test_same_seed_same_output_different_seed_different_output():
    x = _images((8, 3, 32, 32))
    a = augment(x, OPS, _gen(7))
    b = augment(x, OPS, _gen(7))
    c = augment(x, OPS, _gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("op", [*OPS, "all"])
def test_bf16_input_works(op):
    x = _images((8, 3, 32, 32), dtype=torch.bfloat16)
    config = OPS if op == "all" else {op: OPS[op]}
    out = augment(x, config, _gen(3))
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    assert out.min() >= 0.0 and out.max() <= 1.0
    ref = augment(x.float(), config, _gen(3))
    # Same draws in float32 give the same images up to bf16 rounding (8 bits of mantissa).
    assert (out.float() - ref).abs().max() < 0.05


def test_crop_equals_reflect_pad_then_crop():
    n, shape = 4, (8, 3, 32, 24)
    x = _images(shape)
    out = augment(x, {"aug_crop": n}, _gen(4))
    padded = F.pad(x, (n, n, n, n), mode="reflect")
    h, w = shape[-2:]
    for i in range(shape[0]):
        windows = [
            padded[i, :, dy : dy + h, dx : dx + w]
            for dy in range(2 * n + 1)
            for dx in range(2 * n + 1)
        ]
        # Each sample is exactly one HxW window of the reflect-padded image.
        assert any(torch.equal(out[i], win) for win in windows)


def test_crop_larger_than_image_still_works():
    # Reflect padding via F.pad needs pad < size; the crop must not depend on that.
    x = _images((4, 1, 8, 8))
    out = augment(x, {"aug_crop": 16}, _gen(5))
    assert out.shape == x.shape and out.min() >= 0.0 and out.max() <= 1.0


def test_affine_uses_border_padding():
    x = torch.full((4, 3, 40, 24), 0.3)
    out = augment(x, {"aug_rotate": 45.0, "aug_zoom": 0.5, "aug_shear": 30.0}, _gen(6))
    # Border (nearest) padding keeps a constant image constant: no black corners appear.
    assert torch.allclose(out, x, atol=1e-5)


def test_cutout_fills_one_grey_square_and_keeps_the_rest():
    side = 8
    x = _images((16, 3, 32, 32))
    out = augment(x, {"aug_cutout": side}, _gen(7))
    changed = out != x
    # Only cut-out pixels change, and they are exactly grey.
    assert torch.all(out[changed] == 0.5)
    per_sample = changed.any(dim=1).sum(dim=(1, 2))
    # Each sample loses between one pixel (centre at a corner) and a full side x side square.
    assert torch.all(per_sample >= 1) and torch.all(per_sample <= side * side)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_generator_works_for_cuda_input():
    x = _images((8, 3, 32, 32))
    cpu = augment(x, OPS, _gen(9))
    gpu = augment(x.cuda(), OPS, _gen(9))
    # Draws come from the (CPU) generator, so CPU and CUDA see the same parameters.
    assert gpu.device.type == "cuda" and torch.allclose(gpu.cpu(), cpu, atol=1e-4)


@pytest.mark.parametrize(
    "key,value",
    [
        ("aug_rotate", -3),
        ("aug_rotate", 181.0),
        ("aug_crop", 17),
        ("aug_crop", 2.5),
        ("aug_zoom", 0.95),
        ("aug_shear", 61.0),
        ("aug_cutout", 65),
        ("aug_brightness", 1.5),
        ("aug_contrast", float("nan")),
        ("aug_flip", "yes"),
        ("aug_flipp", True),
    ],
)
def test_config_check_rejects_out_of_range(key, value):
    with pytest.raises(ValueError, match=key):
        check_config({key: value})


def test_config_check_accepts_defaults_and_extremes():
    check_config(AUG_DEFAULTS)
    check_config({**OPS, "lr": 0.1})
    check_config(
        {
            "aug_flip": True,
            "aug_crop": 16,
            "aug_rotate": 180,
            "aug_zoom": 0.9,
            "aug_shear": 60,
            "aug_cutout": 64,
            "aug_brightness": 1.0,
            "aug_contrast": 1.0,
        }
    )
