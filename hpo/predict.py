"""Classifying image files with an exported model (hpo.export's .onnx) in onnxruntime.

Images are decoded as hpo decoded the trials' images (hpo.sources.convert_image: PIL, the
model's mode and size), by a thread pool that decodes the next batches while onnxruntime runs
the current one; the model's own preprocessing does the rest. Files that cannot be read are
reported one line each and skipped. Neither torch nor Ray is imported.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from hpo.errors import PredictError
from hpo.sources import IMAGE_SUFFIXES, convert_image, one_line

BATCH = 64
PREFETCH = 2  # batches decoded ahead of the one onnxruntime is running
LONG = 256  # images from which a terminal shows a progress bar
PROGRESS_EVERY_S = 10.0  # a line on stderr this often when it is not a terminal


@dataclass(frozen=True)
class Result:
    """One image's outcome: its top classes with their probabilities, best first, or why it
    could not be read."""

    file: Path
    top: tuple[tuple[str, float], ...] = ()
    error: str | None = None


class Model:
    """An exported model open in onnxruntime: on CUDA when onnxruntime has it (and not
    `cpu`), else on the CPU. `classes`, `mode` and `size` (width, height) come from the
    metadata hpo.export wrote."""

    def __init__(self, path: str | os.PathLike, cpu: bool = False):
        path = Path(path)
        if not path.is_file():
            raise PredictError(f"{path}: no such model file")
        import onnxruntime

        providers = ["CPUExecutionProvider"]
        if not cpu and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = onnxruntime.InferenceSession(path, providers=providers)
        except Exception as exc:  # onnxruntime raises its own types for every bad file
            raise PredictError(f"{path}: not an ONNX model onnxruntime can load "
                               f"({one_line(exc)})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if "classes" not in meta or "image_shape" not in meta:
            raise PredictError(f"{path}: not a model hpo exported (no classes or image_shape "
                               "in its metadata); write one with hpo export STUDY --model "
                               "FILE.onnx")
        self.path = path
        self.classes: list[str] = json.loads(meta["classes"])
        channels, height, width = json.loads(meta["image_shape"])
        self.mode = "L" if channels == 1 else "RGB"
        self.size = (width, height)
        self.input = self.session.get_inputs()[0].name
        self.provider = self.session.get_providers()[0]

    def decode(self, file: Path) -> np.ndarray:
        """One image file as the model's uint8 [H, W, C] input."""
        with Image.open(file) as im:
            a = np.asarray(convert_image(im, self.mode, self.size))
        return a[..., None] if a.ndim == 2 else a

    def run(self, images: np.ndarray) -> np.ndarray:
        """Probabilities [N, K] of uint8 images [N, H, W, C]."""
        return self.session.run(None, {self.input: images})[0]


def find_images(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """The files named, and the image files (hpo.sources.IMAGE_SUFFIXES) under the folders
    named, recursively, in order; each once. PredictError for a path that does not exist or
    when there is no image at all."""
    found: dict[Path, None] = {}
    paths = [Path(p) for p in paths]
    for path in paths:
        if path.is_dir():
            found.update(dict.fromkeys(sorted(
                p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                and p.is_file())))
        elif path.exists():
            found[path] = None
        else:
            raise PredictError(f"{path}: no such file or folder")
    if not found:
        names = ", ".join(map(str, paths[:3])) + (", ..." if len(paths) > 3 else "")
        raise PredictError(f"{names}: no image files here ({', '.join(IMAGE_SUFFIXES)})")
    return list(found)


def classify(model: Model, files: Sequence[Path], top: int = 1, batch: int = BATCH,
             workers: int | None = None) -> Iterator[Result]:
    """A Result per file, in order: decoded in a thread pool `PREFETCH` batches ahead of the
    batch onnxruntime runs (its run releases the GIL, so both proceed at once)."""
    top = max(1, min(top, len(model.classes)))
    workers = workers or min(8, os.cpu_count() or 1)

    def decode(file: Path) -> np.ndarray | str:
        try:
            return model.decode(file)
        except Exception as exc:  # any file may be damaged in any way: say which and go on
            return one_line(exc)

    chunks = (files[i : i + batch] for i in range(0, len(files), batch))
    with ThreadPoolExecutor(workers) as pool:
        pending = deque((c, pool.map(decode, c)) for c in itertools.islice(chunks, PREFETCH))
        while pending:
            chunk, decoded = pending.popleft()
            decoded = list(decoded)
            nxt = next(chunks, None)
            if nxt is not None:
                pending.append((nxt, pool.map(decode, nxt)))
            images = [a for a in decoded if not isinstance(a, str)]
            probs = iter(model.run(np.stack(images)) if images else ())
            for file, a in zip(chunk, decoded):
                if isinstance(a, str):
                    yield Result(file, error=a)
                    continue
                p = next(probs)
                best = np.argsort(-p, kind="stable")[:top]
                yield Result(file, tuple((model.classes[k], float(p[k])) for k in best))


def print_predictions(model_path: str | os.PathLike, paths: Sequence[str | os.PathLike], *,
                      top: int = 1, as_csv: bool = False, batch: int = BATCH,
                      cpu: bool = False, err: IO[str] | None = None) -> int:
    """`hpo predict`: a line per image on stdout (file, class, probability, and the next
    `top`-1 classes; CSV with `as_csv`), a line per unreadable file and a summary on `err`
    (stderr), a progress bar there when it is a terminal and the images are many, else a
    line every PROGRESS_EVERY_S seconds. Returns the exit status: 0, or 1 when no image
    could be read."""
    err = err or sys.stderr
    files = find_images(paths)  # first: a wrong path costs no model load
    model = Model(model_path, cpu=cpu)
    k = max(1, min(top, len(model.classes)))
    if as_csv:
        _print_csv(["file", "class", "probability",
                    *(f"{c}_{i}" for i in range(2, k + 1) for c in ("class", "probability"))])
    read = unreadable = 0
    t0 = last = time.perf_counter()
    with Progress(len(files), err) as progress:
        for result in classify(model, files, k, batch):
            if result.error is not None:
                unreadable += 1
                progress.note(f"{result.file}: cannot read image, skipped ({result.error})")
            else:
                read += 1
                cells = [str(result.file), *(v for c, p in result.top for v in (c, f"{p:.4f}"))]
                if as_csv:
                    _print_csv(cells)
                else:
                    print("  ".join(cells))
            progress.advance()
            now = time.perf_counter()
            if progress.bar is None and now - last >= PROGRESS_EVERY_S:
                last = now
                progress.note(f"hpo predict: {read + unreadable:,}/{len(files):,} images, "
                              f"{read / (now - t0):,.1f} img/s")
    seconds = time.perf_counter() - t0
    print(f"hpo predict: {read:,} images, {unreadable:,} unreadable, "
          f"{read / max(seconds, 1e-9):,.1f} img/s ({model.provider})", file=err)
    return 0 if read else 1


def _print_csv(row: list[str]) -> None:
    line = io.StringIO()
    csv.writer(line, lineterminator="\n").writerow(row)
    # print, not a csv.writer kept on sys.stdout: a live progress bar replaces sys.stdout
    print(line.getvalue(), end="")


class Progress:
    """While classifying: a rich progress bar on `err` when it is a terminal and there are
    LONG images or more (results printed to a terminal stdout go above it); `note` prints
    a line on `err` without breaking the bar."""

    def __init__(self, total: int, err: IO[str]):
        self.err, self.bar = err, None
        if total >= LONG and err.isatty():
            from rich import progress
            from rich.console import Console

            self.bar = progress.Progress(
                progress.TextColumn("predict"), progress.BarColumn(),
                progress.MofNCompleteColumn(), progress.TimeRemainingColumn(),
                console=Console(file=err), redirect_stdout=sys.stdout.isatty(),
                redirect_stderr=False)
            self.task = self.bar.add_task("predict", total=total)

    def __enter__(self) -> Progress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.advance(self.task)

    def note(self, line: str) -> None:
        if self.bar is not None:
            self.bar.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            print(line, file=self.err, flush=True)
