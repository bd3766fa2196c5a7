"""Where a dataset's images come from, and decoding them: Hugging Face style Parquet,
torchvision's CIFAR-10 folder, folders of images sorted into one subfolder per class.

`detect` recognises a source; its reader lists the images lazily; `materialise` decodes them
all to uint8 NCHW arrays of one mode and size. hpo.data caches and splits the result.
"""
from __future__ import annotations

import bisect
import hashlib
import io
import json
import os
import pickle
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from hpo.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
LABEL_COLUMNS = ("label", "labels", "fine_label")
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_decoded = 0  # images decoded with PIL by this process, for decode_count()
_decoded_lock = threading.Lock()


def decode_count() -> int:
    """How many images this process has decoded with PIL so far (a cache hit decodes none)."""
    return _decoded


@dataclass
class Split:
    """One split's images, listed but not decoded yet, with their labels."""

    labels: np.ndarray
    open: Callable[[int], Image.Image]  # image i, opened lazily
    where: Callable[[int], str]  # names image i in error messages
    x: np.ndarray | None = None  # already uint8 NCHW (CIFAR pickles): decode only to convert


def detect(source: str | os.PathLike) -> tuple[str, Path, list[Path], Callable]:
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
        raise DataError(f"{root}: torchvision could not download CIFAR-10 ({one_line(e)})") from e


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
                                f"({one_line(e)})") from e
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
        split = Split(np.concatenate(labels), lambda i: Image.open(io.BytesIO(blobs[i])), where)
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
            raise DataError(f"{d / name}: not a readable CIFAR batch ({one_line(e)})") from e

    def split(names) -> Split:
        entries = [unpickle(n) for n in names]
        x = np.concatenate([np.asarray(e["data"], np.uint8).reshape(-1, 3, 32, 32)
                            for e in entries])
        y = np.concatenate([np.asarray(e["labels"], np.int64) for e in entries])
        return Split(y, lambda i: Image.fromarray(x[i].transpose(1, 2, 0)),
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

    def split(by_class: dict[str, list[Path]]) -> Split:
        files = [f for c in classes for f in by_class.get(c, [])]
        y = np.array([k for k, c in enumerate(classes) for _ in by_class.get(c, [])], np.int64)
        return Split(y, lambda i: Image.open(files[i]), lambda i: str(files[i]))

    files = [f for d in (train, test) for fs in d.values() for f in fs]
    return "folder", path, files, lambda: (split(train), split(test) if test else None, classes)


def materialise(path: Path, train: Split, test: Split | None, classes: list[str] | None,
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
            raise DataError(f"{train.where(i)}: cannot read image ({one_line(e)})") from e
    mode = "L" if channels == 1 or (channels is None and modes <= {"1", "L", "LA"}) else "RGB"
    size = (image_size, image_size) if image_size else size
    splits = {"train": train, **({"test": test} if test is not None else {})}
    top = max(int(s.labels.max(initial=0)) for s in splits.values())
    classes = classes or [str(k) for k in range(top + 1)]
    if len(classes) < 2:
        raise DataError(f"{path}: only one class ({classes[0]}): nothing to tell apart; "
                        "a classifier needs two or more")
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


def convert_image(im: Image.Image, mode: str, size: tuple[int, int] | None) -> Image.Image:
    """`im` as hpo decodes every image: in `mode` ("RGB" or "L", PIL's conversion), then
    resized to `size` (width, height) with PIL's bilinear filter unless None. hpo predict
    decodes images with it too, so that a model sees the pixels its trials saw."""
    im = im if im.mode == mode else im.convert(mode)
    return im if size is None or im.size == size else im.resize(size, Image.BILINEAR)


def _decode(path: Path, split: Split, mode: str, size: tuple[int, int],
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
                    im = convert_image(im, mode, size if resize else None)
                    if im.size != size:
                        other_sizes.setdefault(im.size, i)
                        continue
                    a = np.asarray(im)
            except Exception as e:
                raise DataError(f"{split.where(i)}: cannot decode image ({one_line(e)})") from e
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


def one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
