"""A frozen backbone's trial with and without the feature cache (hpo/features.py).

The same config, a backbone frozen up to its cut under a small head, no augmentation, is
trained three times in this one process by `hpo.train.run_trial`, and each whole call is
timed (model build, data to the device, every epoch's training and validation):

  (a) uncached: HPO_FEATURE_CACHE=0, the frozen backbone runs on every batch of every epoch;
  (b) cached, cold: an empty cache, so the trial first computes the features and writes them;
  (c) cached, warm: a new trial (the in-process copy dropped) reading the file (b) wrote,
      as every later trial of a search does.

The weights are torchvision's random start unless --weights-dir holds the pretrained file:
the computation, and so the time, is the same. A short untimed trial first warms up the
allocator and kernel selection.

    python bench/features.py                   # resnet50 at 224 px, all of CIFAR-10, a GPU
    python bench/features.py --small           # resnet18 at 64 px on 2% of it, the CPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import DEFAULT_DATA, parse_run_options, provenance, warmup_slice

from hpo import features
from hpo.config import complete
from hpo.data import Dataset, load_dataset
from hpo.model import build_model, count_parameters
from hpo.train import run_trial
from hpo.weights import check_weights

SMALL = dict(backbone="resnet18", input_size=64, fraction=0.02, epochs=3, batch_size=64)
FULL = dict(backbone="resnet50", input_size=224, fraction=1.0, epochs=10, batch_size=256)


def trial(config: dict, data: Dataset, device: torch.device) -> dict:
    """run_trial's wall time and its epochs' training seconds."""
    rows: list[dict] = []
    t0 = time.perf_counter()
    final = run_trial(config, data, lambda m, *a, **k: rows.append(m), device)
    wall = time.perf_counter() - t0
    if final["status"] != "completed":
        sys.exit(f"trial ended {final['status']}: {final.get('reason')}")
    return {"wall_s": wall, "train_s": sum(r["train_seconds"] for r in rows),
            "features": rows[-1].get("features"), "val_acc": rows[-1]["val_acc"]}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--backbone", help="default resnet50; --small: resnet18")
    p.add_argument("--cut", type=int, default=5, help="stages kept (default 5, all)")
    p.add_argument("--input-size", type=int, help="default 224; --small: 64")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="dataset for load_dataset "
                   "(default: ../shared/datasets/cifar10 next to the repository)")
    p.add_argument("--fraction", type=float, help="share of the training split (default 1.0; "
                   "--small: 0.02)")
    p.add_argument("--epochs", type=int, help="default 10; --small: 3")
    p.add_argument("--batch-size", type=int, help="default 256; --small: 64")
    p.add_argument("--weights-dir", help="pretrained weights (default: a random start)")
    p.add_argument("--small", action="store_true", help="CPU form: resnet18 at 64 px, "
                   "fraction 0.02, 3 epochs, batch 64 (explicit options win)")
    args, device, load_before = parse_run_options(p, argv, SMALL, FULL)
    data = load_dataset(args.data, fraction=args.fraction).without_test()
    config = complete(dict(
        backbone=args.backbone, pretrained=args.weights_dir is not None, cut=args.cut,
        frozen=args.cut, input_size=args.input_size, head="gap", dense_layers=1, dense_1=256,
        dropout_head=0.2, optimizer="adam", lr=1e-3, epochs=args.epochs,
        batch_size=args.batch_size))
    if args.weights_dir:
        check_weights([config], args.weights_dir)
    params = count_parameters(build_model(config, data.image_shape, data.num_classes))
    runs = {}
    # the features go to a cache of their own, empty at first: (b) is truly cold
    with tempfile.TemporaryDirectory(prefix="hpo-bench-features-") as cache:
        os.environ["HPO_CACHE"] = cache
        run_trial(config, warmup_slice(data, 2 * args.batch_size), lambda *a, **k: None,
                  device)
        os.environ[features.ENV_SWITCH] = "0"
        runs["uncached"] = trial(config, data, device)
        os.environ[features.ENV_SWITCH] = "1"
        features._memory.clear()
        runs["cached_cold"] = trial(config, data, device)
        features._memory.clear()
        runs["cached_warm"] = trial(config, data, device)
    out = {**provenance(device, load_before), "backbone": args.backbone, "cut": args.cut,
           "input_size": args.input_size, "trainable_params": params,
           "train_images": len(data.y_train), "val_images": len(data.y_val),
           "epochs": args.epochs, "batch_size": args.batch_size, "runs": runs,
           "speedup_warm": runs["uncached"]["wall_s"] / runs["cached_warm"]["wall_s"],
           "speedup_cold": runs["uncached"]["wall_s"] / runs["cached_cold"]["wall_s"]}
    print(f"machine:  {out['machine']}; 1-min load average {load_before:.1f} before, "
          f"{out['load_avg_1m'][1]:.1f} after\ntorch:    {out['torch']}\n"
          f"trial:    {args.backbone} cut {args.cut}, all frozen, {args.input_size} px, head "
          f"of {params:,} params, {args.epochs} epochs of {out['train_images']:,} images "
          f"(+ {out['val_images']:,} validation), batch {args.batch_size}")
    for name, r in runs.items():
        print(f"{name + ':':13s} {r['wall_s']:8.2f} s whole trial, {r['train_s']:8.2f} s "
              f"training epochs, val_acc {r['val_acc']:.3f} ({r['features'] or 'no cache'})")
    print(f"speedup:  {out['speedup_warm']:.1f}x with the features on file, "
          f"{out['speedup_cold']:.1f}x for the trial that computes them")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
