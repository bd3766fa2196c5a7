"""Datasets as uint8 NCHW arrays: found, decoded once per source, cached, then split.

Understands Hugging Face style Parquet, torchvision's CIFAR-10 folder and folders of images
sorted into one subfolder per class. See `load_dataset` for the contract.
"""
from __future__ import annotations

import bisect
import hashlib
import io
import json
import logging
import os
import pickle
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
LABEL_COLUMNS = ("label", "labels", "fine_label")
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CACHE_VERSION = 1  # bump whenever decoding or the npz layout changes: old entries then miss
_decoded = 0  # images decoded with PIL by this process, for decode_count()
_decoded_lock = threading.Lock()


class DataError(ValueError):
    """A dataset that cannot be used; the message is one line: "<path>: <problem>"."""


def decode_count() -> int:
    """How many images this process has decoded with PIL so far (a cache hit decodes none)."""
    return _decoded


@dataclass(frozen=True, eq=False)  # eq on arrays is ambiguous; compare fingerprints instead
class Dataset:
    """Decoded, split images: x_* uint8 [N, C, H, W] C-contiguous, y_* int64 [N] in 0..K-1.

    `fingerprint` (short hex) identifies the decoded content (so source, image_size and
    channels) together with the split settings; equal fingerprints mean equal arrays.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    classes: tuple[str, ...]
    fingerprint: str

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
    round(val_fraction * N) in val, the rest in train. Raises ValueError for bad arguments and
    DataError (one line, naming the path) for missing, unrecognised or unreadable data.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if not 0.0 <= val_fraction <= 0.9:
        raise ValueError(f"val_fraction must be in [0, 0.9], got {val_fraction}")
    if image_size is not None and (int(image_size) != image_size or image_size < 1):
        raise ValueError(f"image_size must be a positive integer or None, got {image_size}")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None, got {channels}")
    image_size = None if image_size is None else int(image_size)
    fmt, path, files, read = _detect(source)
    stats = [(os.path.relpath(f, path), f.stat()) for f in files]
    key = _digest([_CACHE_VERSION, fmt, str(path.resolve()), image_size, channels,
                   [(name, st.st_size, st.st_mtime_ns) for name, st in stats]], 32)
    cache = Path(cache_dir or os.environ.get("HPO_CACHE") or Path.home() / ".cache" / "hpo")
    arrays = _read_cache(cache / f"data-{key}.npz")
    if arrays is None:
        t0 = time.perf_counter()
        arrays = _materialise(path, *read(), image_size, channels)
        log.info("decoded %s in %.1f s", path, time.perf_counter() - t0)
        _write_cache(cache / f"data-{key}.npz", arrays)
    return _split(arrays, path, val_fraction, seed, fraction)


# -- finding the data ------------------------------------------------------------------------

@dataclass
class _Split:
    labels: np.ndarray
    open: Callable[[int], Image.Image]  # image i, opened lazily
    where: Callable[[int], str]  # names image i in error messages
    x: np.ndarray | None = None  # already uint8 NCHW (CIFAR pickles): decode only to convert


def _detect(source: str | os.PathLike) -> tuple[str, Path, list[Path], Callable]:
    """(format, path, files whose stats key the cache, reader -> (train, test, classes))."""
    text = os.fspath(source)
    if text.startswith("torchvision:"):
        root = text.split(":", 1)[1]
        _download_cifar(Path(root))
        text = os.path.join(root, "cifar-10-batches-py")
    path = Path(text)
    if not path.exists():
        raise DataError(f"{path}: does not exist")
    if path.is_file() and path.suffix == ".parquet":
        return "parquet", path, [path], lambda: _read_parquet([path], [])
    if path.is_dir():
        if (path / "train.parquet").is_file():
            train, test = [path / "train.parquet"], [path / "test.parquet"]
            test = [f for f in test if f.is_file()]
            return "parquet", path, train + test, lambda: _read_parquet(train, test)
        cifar = path if path.name == "cifar-10-batches-py" else path / "cifar-10-batches-py"
        if (cifar / "batches.meta").is_file():
            names = [*CIFAR_TRAIN, "test_batch", "batches.meta"]
            files = [cifar / n for n in names if (cifar / n).is_file()]
            return "cifar10", path, files, lambda: _read_cifar(cifar)
        if train := _image_files(path / "train"):
            return _image_folder(path, train, path / "test")
        hub = sorted(path.rglob("train-*.parquet"))
        if hub:
            if len({f.parent for f in hub}) > 1:
                raise DataError(f"{path}: train-*.parquet in several folders; pick one as source")
            test = sorted(hub[0].parent.glob("test-*.parquet"))
            return "parquet", path, hub + test, lambda: _read_parquet(hub, test)
        if train := _image_files(path):
            return _image_folder(path, train, None)
    raise DataError(f"{path}: no dataset hpo recognises here (expected train.parquet, "
                    "train-*.parquet, cifar-10-batches-py/, or <class>/ folders of images)")


def _download_cifar(root: Path) -> None:
    try:
        from torchvision.datasets import CIFAR10
        for train in (True, False):
            CIFAR10(str(root), train=train, download=True)
    except Exception as e:  # offline, disk full, bad checksum: all end the same way
        raise DataError(f"{root}: torchvision could not download CIFAR-10 ({_one_line(e)})") from e


def _read_parquet(train: list[Path], test: list[Path]):
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import pyarrow.types as pt

    def is_image(t) -> bool:
        if pt.is_struct(t):
            return any(t.field(i).name == "bytes" for i in range(t.num_fields))
        return pt.is_binary(t) or pt.is_large_binary(t)

    def read(files: list[Path]):
        blobs, labels, ends, classes = [], [], [], None
        for f in files:
            try:
                schema = pq.read_schema(f)
                img = next((c.name for c in schema if is_image(c.type)), None)
                lab = next((c for c in LABEL_COLUMNS if c in schema.names), None)
                if img is None or lab is None:
                    raise DataError(f"{f}: no " + ("image column (struct<bytes, path> or binary)"
                                    if img is None else f"label column {LABEL_COLUMNS}"))
                table = pq.read_table(f, columns=[img, lab])
            except DataError:
                raise
            except Exception as e:  # pyarrow raises several types for damaged files
                raise DataError(f"{f}: not a readable Parquet file, truncated or corrupt "
                                f"({_one_line(e)})") from e
            col, y = table.column(img), table.column(lab)
            col = pc.struct_field(col, "bytes") if pt.is_struct(col.type) else col
            if col.null_count or y.null_count or not pt.is_integer(y.type):
                raise DataError(f"{f}: images without bytes, or labels missing or not integers")
            blobs += col.to_pylist()
            labels.append(y.to_numpy().astype(np.int64))
            ends.append(len(blobs))
            classes = classes or _parquet_classes(schema.metadata or {}, lab)

        def where(i: int) -> str:
            k = bisect.bisect_right(ends, i)
            return f"{files[k]}: row {i - (ends[k - 1] if k else 0)}"
        split = _Split(np.concatenate(labels), lambda i: Image.open(io.BytesIO(blobs[i])), where)
        return split, classes

    tr, classes = read(train)
    return tr, read(test)[0] if test else None, classes


def _parquet_classes(meta: dict, label: str) -> list[str] | None:
    if b"classes" in meta:  # our files and the shared copy: "a,b,c"; a JSON list works too
        text = meta[b"classes"].decode()
        try:
            names = json.loads(text)
        except ValueError:
            names = None
        return [str(n) for n in names] if isinstance(names, list) else \
            [n.strip() for n in text.split(",")]
    try:  # Hugging Face `datasets` keeps its ClassLabel names here
        return list(json.loads(meta[b"huggingface"])["info"]["features"][label]["names"])
    except (KeyError, TypeError, ValueError):
        return None


def _read_cifar(d: Path):
    def unpickle(name: str) -> dict:
        try:
            with open(d / name, "rb") as f:  # as trusted as torchvision's own loader
                entry = pickle.load(f, encoding="latin1")
            return {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
        except Exception as e:
            raise DataError(f"{d / name}: not a readable CIFAR batch ({_one_line(e)})") from e

    def split(names) -> _Split:
        entries = [unpickle(n) for n in names]
        x = np.concatenate([np.asarray(e["data"], np.uint8).reshape(-1, 3, 32, 32)
                            for e in entries])
        y = np.concatenate([np.asarray(e["labels"], np.int64) for e in entries])
        return _Split(y, lambda i: Image.fromarray(x[i].transpose(1, 2, 0)),
                      lambda i: f"{d}: image {i}", x)

    test = split(["test_batch"]) if (d / "test_batch").is_file() else None
    return split(CIFAR_TRAIN), test, [str(n) for n in unpickle("batches.meta")["label_names"]]


def _image_files(d: Path) -> dict[str, list[Path]]:
    """{class folder name: sorted image files below it}, for non-hidden folders with images."""
    if not d.is_dir():
        return {}
    found = {c.name: sorted(p for p in c.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
             for c in sorted(d.iterdir()) if c.is_dir() and not c.name.startswith(".")}
    return {c: files for c, files in found.items() if files}


def _image_folder(path: Path, train: dict[str, list[Path]], test_dir: Path | None):
    test = _image_files(test_dir) if test_dir else {}
    classes = sorted(train)  # shared by both splits, so test labels mean the same
    if set(test) - set(classes):
        raise DataError(f"{test_dir}: classes not in train: {sorted(set(test) - set(classes))}")

    def split(by_class: dict[str, list[Path]]) -> _Split:
        files = [f for c in classes for f in by_class.get(c, [])]
        y = np.array([k for k, c in enumerate(classes) for _ in by_class.get(c, [])], np.int64)
        return _Split(y, lambda i: Image.open(files[i]), lambda i: str(files[i]))

    files = [f for d in (train, test) for fs in d.values() for f in fs]
    return "folder", path, files, lambda: (split(train), split(test) if test else None, classes)


# -- decoding, caching, splitting ------------------------------------------------------------

def _materialise(path: Path, train: _Split, test: _Split | None, classes: list[str] | None,
                 image_size: int | None, channels: int | None) -> dict[str, np.ndarray]:
    """Decode both splits to one mode and size, check the labels, hash the content."""
    if len(train.labels) == 0:
        raise DataError(f"{path}: no training images")
    modes, size = set(), None
    for i in np.unique(np.linspace(0, len(train.labels) - 1, 32).astype(int)).tolist():
        try:
            with train.open(i) as im:  # lazy: reads the header only
                modes.add(im.mode)
                size = size or im.size
        except Exception as e:
            raise DataError(f"{train.where(i)}: cannot read image ({_one_line(e)})") from e
    mode = "L" if channels == 1 or (channels is None and modes <= {"1", "L", "LA"}) else "RGB"
    size = (image_size, image_size) if image_size else size
    splits = {"train": train, **({"test": test} if test is not None else {})}
    top = max(int(s.labels.max(initial=0)) for s in splits.values())
    classes = classes or [str(k) for k in range(top + 1)]
    out = {}
    for name, split in splits.items():
        out[f"x_{name}"] = _decode(path, split, mode, size, resize=bool(image_size))
        out[f"y_{name}"] = y = split.labels
        if len(y) and (y.min() < 0 or y.max() >= len(classes)):
            raise DataError(f"{path}: {name} labels outside 0..{len(classes) - 1}")
    out["classes"] = np.array(classes, dtype=str)
    h = hashlib.blake2b(digest_size=16)  # ~0.2 s for CIFAR; makes fingerprints path-free
    for k in sorted(out):
        h.update(f"{k}{out[k].shape}{out[k].dtype}".encode())
        h.update(np.ascontiguousarray(out[k]).data)
    out["content_hash"] = np.array(h.hexdigest())
    return out


def _decode(path: Path, split: _Split, mode: str, size: tuple[int, int],
            resize: bool) -> np.ndarray:
    global _decoded
    (w, h), c = size, 1 if mode == "L" else 3
    if split.x is not None and split.x.shape[1:] == (c, h, w):
        return np.ascontiguousarray(split.x)  # CIFAR pickles are already what we want
    out = np.empty((len(split.labels), c, h, w), np.uint8)
    other_sizes: dict[tuple[int, int], int] = {}

    def work(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            try:
                with split.open(i) as im:
                    im = im if im.mode == mode else im.convert(mode)
                    if im.size != size and resize:
                        im = im.resize(size, Image.BILINEAR)
                    if im.size != size:
                        other_sizes.setdefault(im.size, i)
                        continue
                    a = np.asarray(im)
            except Exception as e:
                raise DataError(f"{split.where(i)}: cannot decode image ({_one_line(e)})") from e
            out[i] = a[None] if c == 1 else a.transpose(2, 0, 1)

    # PIL parses headers in Python under the GIL: for small images that is most of the cost
    # and threads only contend (CIFAR: ~85 us/image serial, slower with 2 threads). Big images
    # spend their time in C decode/resize, which releases the GIL, so threads scale there.
    workers = min(16, os.cpu_count() or 1) if w * h >= 96 * 96 or resize else 1
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda lo: work(lo, min(lo + 256, len(out))), range(0, len(out), 256)))
    with _decoded_lock:
        _decoded += len(out)
    if other_sizes:
        sizes = ", ".join(f"{a}x{b}" for a, b in [size, *sorted(other_sizes)[:3]])
        raise DataError(f"{path}: images have different sizes ({sizes}); "
                        "set image_size in the space file")
    return out


def _read_cache(file: Path) -> dict[str, np.ndarray] | None:
    if not file.is_file():
        return None
    try:
        with np.load(file, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # damaged or foreign file: decode again and overwrite it
        log.warning("ignoring unreadable cache %s (%s)", file, _one_line(e))
        return None


def _write_cache(file: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = None
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a shared cache must be readable by all
        os.replace(tmp, file)  # atomic: readers see no file or the whole file, never half
        tmp = None
    except OSError as e:  # a read-only cache only costs the next run another decode
        log.warning("could not write dataset cache %s (%s)", file, _one_line(e))
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


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
                   tuple(str(c) for c in a["classes"]), fp)


def _digest(parts: list, n: int = 16) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:n]


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
