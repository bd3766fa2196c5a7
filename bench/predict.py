"""hpo predict's engine against a plain PyTorch loop over the same network and image files.

Both classify the same files, with the network already loaded, and each whole pass is timed
from the list of files to every image's probabilities, decoding included:

  (a) engine: hpo.predict.classify on the exported .onnx (hpo.export.write_onnx): a thread
      pool decodes each file with hpo.sources.convert_image a batch or two ahead, while
      onnxruntime runs the model with its preprocessing inside;
  (b) PyTorch: the loop a user writes around build_model and best.pt: for each batch, decode
      each file with the same convert_image in this thread, stack, hpo.train.preprocess, the
      network, softmax, under torch.inference_mode.

The networks are random (speed does not depend on the weights). Each path runs once on its
first batch untimed (warm-up), then --repeat timed passes; every pass is reported.

    python bench/predict.py                 # both cases below
    python bench/predict.py --small         # a few files per case, for the test suite
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import NETS, provenance
from PIL import Image

from hpo.classifier import ImageClassifier
from hpo.config import complete
from hpo.export import write_onnx
from hpo.model import build_model
from hpo.predict import Model, classify
from hpo.sources import convert_image
from hpo.train import preprocess

# name -> (config, the size the trials saw (C, H, W), files: count, width x height, format)
CASES = {
    "basenet-32px": (NETS["basenet"], (3, 32, 32), (2000, (32, 32), "PNG")),
    "resnet18-128px": (dict(backbone="resnet18", pretrained=False, cut=5, input_size=128,
                            head="gap"), (3, 160, 160), (200, (320, 240), "JPEG")),
}


def write_files(folder: Path, count: int, size: tuple[int, int], fmt: str) -> list[Path]:
    """`count` smooth random images (noise upsampled, so JPEG and PNG sizes are realistic)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    files = []
    for i in range(count):
        small = rng.integers(0, 256, (size[1] // 4, size[0] // 4, 3), dtype=np.uint8)
        files.append(folder / f"{i:05d}.{fmt.lower()}")
        Image.fromarray(small).resize(size, Image.BICUBIC).save(files[-1], fmt)
    return files


def torch_loop(net, config, dev, files: list[Path], size, batch: int) -> np.ndarray:
    """(b): decode, preprocess and run a batch at a time, in this thread."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(files), batch):
            x = np.stack([np.asarray(convert_image(Image.open(f), "RGB", size))
                          for f in files[i : i + batch]])
            xb = preprocess(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), dev, config,
                            torch.float32)
            out.append(torch.softmax(net(xb), dim=1).numpy())
    return np.concatenate(out)


def engine(model: Model, files: list[Path], batch: int) -> int:
    """(a): the engine, consumed; returns the images it classified."""
    return sum(r.error is None for r in classify(model, files, batch=batch))


def timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def run_case(name: str, count: int, batch: int, repeat: int, work: Path) -> dict:
    config, shape, (n, file_size, fmt) = CASES[name]
    config = complete({**config, "batch_size": batch})
    files = write_files(work / name, count or n, file_size, fmt)
    net = build_model(config, shape, 10).eval()
    c = shape[0]
    mean, std = torch.full((1, c, 1, 1), 0.5), torch.full((1, c, 1, 1), 0.25)
    classifier = ImageClassifier(net, config, shape, mean, std)
    onnx_file = work / f"{name}.onnx"
    write_onnx(classifier, onnx_file, {"classes": [str(k) for k in range(10)],
                                       "image_shape": list(shape)})
    model = Model(onnx_file, cpu=True)
    size = (shape[2], shape[1])
    # the loop's statistics as the classifier holds them: both paths normalise alike
    dev = classifier
    engine(model, files[:batch], batch)
    torch_loop(net, config, dev, files[:batch], size, batch)
    runs = {"engine_s": [], "torch_s": []}
    for _ in range(repeat):
        runs["engine_s"].append(timed(engine, model, files, batch))
        runs["torch_s"].append(timed(torch_loop, net, config, dev, files, size, batch))
    # the two paths compute the same thing: every class's probability, file by file
    engine_probs = np.zeros((len(files), 10))
    for i, r in enumerate(classify(model, files, top=10, batch=batch)):
        engine_probs[i, [int(c) for c, _ in r.top]] = [p for _, p in r.top]
    torch_probs = torch_loop(net, config, dev, files, size, batch)
    return {"files": len(files), "file_size": list(file_size), "format": fmt,
            "input": list(shape), "params": sum(p.numel() for p in net.parameters()),
            "batch": batch,
            "provider": model.provider, **runs,
            "engine_img_per_s": [len(files) / s for s in runs["engine_s"]],
            "torch_img_per_s": [len(files) / s for s in runs["torch_s"]],
            "ratio_median": statistics.median(runs["torch_s"]) /
            statistics.median(runs["engine_s"]),
            "max_prob_diff": float(np.abs(engine_probs - torch_probs).max())}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--cases", default=",".join(CASES), help=f"of {', '.join(CASES)}")
    p.add_argument("--files", type=int, help="files per case (default: the case's)")
    p.add_argument("--batch", type=int, default=64, help="images per batch (default 64)")
    p.add_argument("--repeat", type=int, default=3, help="timed passes per path (default 3)")
    p.add_argument("--small", action="store_true", help="16 files per case, 1 pass")
    p.add_argument("--json", metavar="PATH", help="also write the figures here as JSON")
    args = p.parse_args(argv)
    if args.small:
        args.files, args.repeat, args.batch = args.files or 16, 1, min(args.batch, 8)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="hpo-bench-predict-") as work:
        cases = {name: run_case(name, args.files, args.batch, args.repeat, Path(work))
                 for name in args.cases.split(",")}
    out = {**provenance(torch.device("cpu"), load_before), "cases": cases,
           "torch_threads": torch.get_num_threads()}
    print(f"machine:  {out['machine']}; 1-min load average {load_before:.1f} before, "
          f"{out['load_avg_1m'][1]:.1f} after; torch {out['torch']}, "
          f"{out['torch_threads']} threads")
    for name, c in cases.items():
        print(f"{name}: {c['files']} {c['format']} files of {c['file_size'][0]}x"
              f"{c['file_size'][1]}, {c['params']:,} params, batch {c['batch']}")
        print("  engine (onnxruntime): " + ", ".join(f"{r:,.0f}" for r in
                                                     c["engine_img_per_s"]) + " img/s")
        print("  PyTorch loop:         " + ", ".join(f"{r:,.0f}" for r in
                                                     c["torch_img_per_s"]) + " img/s")
        print(f"  ratio (median times): {c['ratio_median']:.2f}x; probabilities agree to "
              f"{c['max_prob_diff']:.1e}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
