"""Training throughput of one trial: hpo's engine against the usual DataLoader path.

Both train the same net, in this one process, for one epoch over the same decoded uint8 images
with the same augmentation (random flip, 4-pixel random crop), optimizer and batch size:

  (a) engine: `hpo.train.run_trial` itself (data on the device, augmented there a batch at a
      time); its own `img_per_s` for the epoch, which leaves out validation;
  (b) dataloader: a torchvision Dataset turning each image into a PIL image, RandomCrop(padding=4),
      RandomHorizontalFlip, ToTensor, Normalize, fed by a DataLoader with `--workers` workers
      (pin_memory, bf16 autocast and channels_last on CUDA, as the engine uses).

The crop pads by reflection in (a), with zeros (torchvision's default) in (b): alike in cost.
Each path first runs `--warmup` untimed steps (kernel selection, allocator). For (b) both the
whole epoch from `iter(loader)` on (with the worker start-up a default DataLoader pays every
epoch) and the steady rate after its first step are printed; the headline ratio uses the steady
rate, the figure more favourable to the DataLoader.

    python bench/throughput.py --net vgg                      # full CIFAR-10 on the GPU
    python bench/throughput.py --small --net basenet          # CPU smoke run, seconds
    python bench/throughput.py --net vgg --fraction 0.04 --workers 2 --batch-size 256 --json x.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import (
    DEFAULT_DATA,
    NETS,
    bench_config,
    parse_run_options,
    provenance,
    warmup_slice,
)
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import VisionDataset

from hpo.data import Dataset, channel_stats, load_dataset
from hpo.model import build_model, count_parameters
from hpo.train import run_trial, setup_training, train_step

SMALL = dict(fraction=0.02, workers=2, batch_size=64, warmup=1)  # the CPU smoke form
FULL = dict(fraction=1.0, workers=8, batch_size=512, warmup=3)


def engine(config: dict, data: Dataset, device: torch.device, warmup: int) -> dict:
    """run_trial for config["epochs"] epochs after a short untimed warm-up trial."""
    if warmup:
        warm = warmup_slice(data, warmup * config["batch_size"])
        run_trial(config, warm, lambda *a, **k: None, device)
    rows: list[dict] = []
    final = run_trial(config, data, lambda m, *a, **k: rows.append(m), device)
    if final["status"] != "completed":
        sys.exit(f"engine trial ended {final['status']}: {final.get('reason')}")
    return rows[0]


class DecodedImages(VisionDataset):
    """uint8 [N, C, H, W] arrays served one PIL image at a time, as torchvision datasets do."""

    def __init__(self, x: np.ndarray, y: np.ndarray, transform):
        super().__init__(root=None, transform=transform)
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        a = self.x[i]
        img = Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0))
        return self.transform(img), int(self.y[i])


def dataloader(config: dict, data: Dataset, device: torch.device, workers: int,
               warmup: int) -> dict:
    """One epoch of the usual loop; images/s with and without the time to the first step."""
    cuda = device.type == "cuda"
    mean, std = channel_stats(data.x_train)
    tf = transforms.Compose([
        transforms.RandomCrop(data.image_shape[1:], padding=config["aug_crop"]),
        transforms.RandomHorizontalFlip(), transforms.ToTensor(), transforms.Normalize(mean, std)])
    n = len(data.y_train)
    batch = min(config["batch_size"], n)  # as the engine clamps it
    loader = DataLoader(DecodedImages(data.x_train, data.y_train, tf), batch_size=batch,
                        shuffle=True, num_workers=workers, pin_memory=cuda, drop_last=True)
    torch.manual_seed(config["seed"])
    fmt = torch.channels_last if cuda else torch.contiguous_format
    # the engine's own model, optimizer and loss, and below its training step: only the
    # input path differs
    model, optimizer, criterion, _ = setup_training(
        build_model(config, data.image_shape, data.num_classes), config, device)
    model.train()

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    def epoch(limit: int | None) -> tuple[int, float, float, float]:
        total, steps = torch.zeros((), device=device), 0
        sync()
        t0 = first = time.perf_counter()
        for xb, yb in loader:
            xb = xb.to(device, non_blocking=True).contiguous(memory_format=fmt)
            yb = yb.to(device, non_blocking=True)
            total += train_step(model, optimizer, criterion, xb, yb)  # no per-step .item()
            steps += 1
            if steps == 1:
                sync()
                first = time.perf_counter()
            if steps == limit:
                break
        total.item()  # waits for the last step
        return steps, t0, first, time.perf_counter()

    if warmup:
        epoch(warmup)  # its workers are shut down when the iterator is dropped
    steps, t0, first, end = epoch(None)
    return {"img_per_s": steps * batch / (end - t0), "first_step_seconds": first - t0,
            "steady_img_per_s": (steps - 1) * batch / (end - first) if steps > 1 else 0.0}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--net", choices=sorted(NETS), default="vgg")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="dataset for load_dataset "
                   "(default: ../shared/datasets/cifar10 next to the repository)")
    p.add_argument("--fraction", type=float, help="train on this share of the training split "
                   "(default 1.0; --small: 0.02)")
    p.add_argument("--batch-size", type=int, help="default 512; --small: 64")
    p.add_argument("--workers", type=int, help="DataLoader workers (default 8; --small: 2)")
    p.add_argument("--warmup", type=int, help="untimed steps per path (default 3; --small 1)")
    p.add_argument("--small", action="store_true", help="CPU smoke form: fraction 0.02, "
                   "2 workers, batch 64, 1 warm-up step (explicit options win)")
    args, device, load_before = parse_run_options(p, argv, SMALL, FULL)
    data = load_dataset(args.data, fraction=args.fraction).without_test()
    config = bench_config(args.net, args.batch_size)
    params = count_parameters(build_model(config, data.image_shape, data.num_classes))
    eng = engine(config, data, device, args.warmup)
    dl = dataloader(config, data, device, args.workers, args.warmup)
    out = {
        **provenance(device, load_before), "net": args.net, "params": params,
        "train_images": len(data.y_train), "batch_size": args.batch_size, "workers": args.workers,
        "engine_img_per_s": eng["img_per_s"], "dataloader_img_per_s": dl["img_per_s"],
        "dataloader_steady_img_per_s": dl["steady_img_per_s"],
        "dataloader_first_step_s": dl["first_step_seconds"]}
    # one step leaves no steady rate to speak of: then the whole epoch is all there is
    out["ratio"] = out["engine_img_per_s"] / (dl["steady_img_per_s"] or dl["img_per_s"])
    out["ratio_whole_epoch"] = out["engine_img_per_s"] / dl["img_per_s"]
    print(f"machine:    {out['machine']}; 1-min load average {load_before:.1f} before, "
          f"{out['load_avg_1m'][1]:.1f} after\ntorch:      {out['torch']}\n"
          f"net:        {args.net}, {params:,} params, batch {args.batch_size}, "
          f"{out['train_images']:,} training images, {args.workers} workers\n"
          f"engine:     {out['engine_img_per_s']:,.0f} img/s\n"
          f"dataloader: {dl['steady_img_per_s']:,.0f} img/s after the first step; "
          f"{dl['img_per_s']:,.0f} img/s over the whole epoch (first step "
          f"{dl['first_step_seconds']:.2f} s, with worker start-up)")
    print(f"ratio:      {out['ratio']:.2f}x engine / dataloader "
          f"({out['ratio_whole_epoch']:.2f}x against the whole epoch)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
