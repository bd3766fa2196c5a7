"""Datasets as uint8 NCHW arrays: decoded once per source (hpo.sources), cached, then split.

See `load_dataset` for the contract.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from hpo.errors import DataError
from hpo.files import cache_dir as default_cache_dir
from hpo.files import replace_file
from hpo.sources import decode_count, detect, materialise, one_line
from hpo.values import CHANNELS, FRACTION, IMAGE_SIZE, VAL_FRACTION

__all__ = ["DataError", "Dataset", "channel_stats", "decode_count", "load_dataset"]

log = logging.getLogger(__name__)

_CACHE_VERSION = 1  # bump whenever decoding or the npz layout changes: old entries then miss


@dataclass(frozen=True, eq=False)  # eq on arrays is ambiguous; compare fingerprints instead
class Dataset:
    """Decoded, split images: x_* uint8 [N, C, H, W] C-contiguous, y_* int64 [N] in 0..K-1.

    `fingerprint` (short hex) identifies the decoded content (so source, image_size and
    channels) together with the split settings; equal fingerprints mean equal arrays.
    `content` identifies the decoded images alone, wherever they were read from.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    classes: tuple[str, ...]
    fingerprint: str
    content: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)

    def without_test(self) -> Dataset:
        """This dataset minus its test split: what a search ships to trials (same fingerprint)."""
        return replace(self, x_test=None, y_test=None)

    def train_and_val(self) -> Dataset:
        """Validation folded into train (x_val empty), for the final retrain; test kept.

        The fingerprint changes: the split differs, and trainers cache device copies by it.
        """
        return replace(
            self, x_train=np.concatenate([self.x_train, self.x_val]),
            y_train=np.concatenate([self.y_train, self.y_val]),
            x_val=self.x_val[:0].copy(), y_val=self.y_val[:0].copy(),
            fingerprint=_digest([self.fingerprint, "train+val"]))

    def __repr__(self) -> str:
        n_test = None if self.y_test is None else len(self.y_test)
        return (f"Dataset(train={len(self.y_train)}, val={len(self.y_val)}, test={n_test}, "
                f"shape={self.image_shape}, classes={self.num_classes}, fp={self.fingerprint})")


def channel_stats(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std of uint8 images [N, C, H, W], in [0, 1] units."""
    if x.ndim != 4 or len(x) == 0:
        raise ValueError(f"channel_stats wants a non-empty [N, C, H, W] array, got {x.shape}")
    s, s2 = np.zeros(x.shape[1]), np.zeros(x.shape[1])
    for lo in range(0, len(x), 4096):  # chunks: a float64 copy of all of CIFAR would be 1.5 GB
        chunk = x[lo:lo + 4096].astype(np.float64) / 255.0
        s += chunk.sum(axis=(0, 2, 3))
        s2 += np.square(chunk).sum(axis=(0, 2, 3))
    n = x.shape[0] * x.shape[2] * x.shape[3]
    mean = s / n
    return mean.tolist(), np.sqrt(np.maximum(s2 / n - mean**2, 0.0)).tolist()


def load_dataset(source: str | os.PathLike, *, val_fraction: float = 0.1, seed: int = 0,
                 fraction: float = 1.0, image_size: int | None = None,
                 channels: int | None = None,
                 cache_dir: str | os.PathLike | None = None) -> Dataset:
    """Load `source` (Parquet, CIFAR-10 folder, `torchvision:DIR`, image folder) as a Dataset.

    Images are decoded once per (source files' paths, sizes and mtimes, image_size, channels)
    and cached as .npz in `cache_dir` (default $HPO_CACHE, else ~/.cache/hpo). `image_size`
    resizes (bilinear) to a square; None requires one common size. `channels` 1 or 3; None
    picks 1 when all sampled images are grayscale. `fraction` in (0, 1] keeps a seeded subset of
    the training images (test stays whole); then a seeded permutation puts the first
    round(val_fraction * N) in val, the rest in train. Raises ConfigError for bad arguments
    and DataError (one line, naming the path) for missing, unrecognised or unreadable data.
    """
    FRACTION.check("fraction", fraction)
    if val_fraction != 0:  # 0: no validation split (a retrain's data)
        VAL_FRACTION.check("val_fraction", val_fraction)
    if image_size is not None:
        image_size = int(IMAGE_SIZE.check("image_size", image_size))
    if channels is not None:
        CHANNELS.check("channels", channels)
    fmt, path, files, read = detect(source)
    stats = [(os.path.relpath(f, path), f.stat()) for f in files]
    key = _digest([_CACHE_VERSION, fmt, str(path.resolve()), image_size, channels,
                   [(name, st.st_size, st.st_mtime_ns) for name, st in stats]], 32)
    cache = Path(cache_dir or default_cache_dir())
    arrays = _read_cache(cache / f"data-{key}.npz")
    if arrays is None:
        t0 = time.perf_counter()
        arrays = materialise(path, *read(), image_size, channels)
        log.info("decoded %s in %.1f s", path, time.perf_counter() - t0)
        _write_cache(cache / f"data-{key}.npz", arrays)
    return _split(arrays, path, val_fraction, seed, fraction)


def _read_cache(file: Path) -> dict[str, np.ndarray] | None:
    if not file.is_file():
        return None
    try:
        with np.load(file, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # damaged or foreign file: decode again and overwrite it
        log.warning("ignoring unreadable cache %s (%s)", file, one_line(e))
        return None


def _write_cache(file: Path, arrays: dict[str, np.ndarray]) -> None:
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        with replace_file(file) as f:  # readers see no file or the whole file, never half
            np.savez(f, **arrays)
    except OSError as e:  # a read-only cache only costs the next run another decode
        log.warning("could not write dataset cache %s (%s)", file, one_line(e))


def _split(a: dict[str, np.ndarray], path: Path, val_fraction: float, seed: int,
           fraction: float) -> Dataset:
    x, y = a["x_train"], a["y_train"]
    idx = np.arange(len(y))
    if fraction < 1.0:  # own stream, so the subset does not depend on val_fraction
        keep = max(1, round(fraction * len(y)))
        idx = np.sort(np.random.default_rng([seed, 1]).permutation(len(y))[:keep])
    perm = np.random.default_rng([seed, 2]).permutation(idx)
    n_val = round(val_fraction * len(perm))
    if n_val >= len(perm):
        raise DataError(f"{path}: {len(perm)} training images leave none to train on "
                        f"after val_fraction={val_fraction}")
    val, train = perm[:n_val], perm[n_val:]
    fp = _digest([str(a["content_hash"]), val_fraction, seed, fraction])
    return Dataset(x[train], y[train], x[val], y[val], a.get("x_test"), a.get("y_test"),
                   tuple(str(c) for c in a["classes"]), fp, str(a["content_hash"]))


def _digest(parts: list, n: int = 16) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:n]
