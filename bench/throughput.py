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
import dataclasses
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import VisionDataset

from hpo.config import complete
from hpo.data import Dataset, channel_stats, load_dataset
from hpo.model import build_model, count_parameters
from hpo.train import make_optimizer, run_trial

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "cifar10"
NETS = {
    # VGG-style: 3 stages x 2 convs, 64-128-256, BatchNorm before ReLU, global average pool
    "vgg": dict(stages=3, convs_1=2, convs_2=2, convs_3=2, width_1=64, width_2=128,
                width_3=256, bn="before", head="gap"),
    # BaseNet (LeNet-like): the architecture of spaces/cifar10.py's "basenet" point
    "basenet": dict(stages=2, convs_1=1, convs_2=1, width_1=6, width_2=16, kernel=5,
                    padding="valid", pool="max", bn="none", head="flatten", dense_layers=1,
                    dense_1=50),
}
SMALL = dict(fraction=0.02, workers=2, batch_size=64, warmup=1)  # the CPU smoke form


def bench_config(net: str, batch_size: int, epochs: int = 1, seed: int = 0) -> dict:
    """The complete trial config both paths train. lr is low so no net diverges mid-benchmark."""
    return complete({**NETS[net], "epochs": epochs, "batch_size": batch_size, "seed": seed,
                     "aug_flip": True, "aug_crop": 4, "optimizer": "sgd", "lr": 0.01})


def machine(device: torch.device) -> str:
    """The GPU's name, or the CPU's model and the cores this process may use."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU {model}, {len(os.sched_getaffinity(0))} cores"


def warmup_slice(data: Dataset, images: int) -> Dataset:
    """The first `images` training images (and a few validation ones, as that pass is untimed)
    under a new fingerprint, since the engine caches device copies by it."""
    return dataclasses.replace(data, x_train=data.x_train[:images], y_train=data.y_train[:images],
                               x_val=data.x_val[:64], y_val=data.y_val[:64],
                               fingerprint=data.fingerprint + "-warmup")


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
    model = build_model(config, data.image_shape, data.num_classes).to(device, memory_format=fmt)
    optimizer = make_optimizer(model, config)
    criterion = nn.CrossEntropyLoss(label_smoothing=config["label_smoothing"])
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
            with torch.autocast("cuda", torch.bfloat16, enabled=cuda):
                loss = criterion(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach().float()  # no per-step .item(): the engine has none either
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
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--small", action="store_true", help="CPU smoke form: fraction 0.02, "
                   "2 workers, batch 64, 1 warm-up step (explicit options win)")
    p.add_argument("--json", metavar="PATH", help="also write the figures here as JSON")
    args = p.parse_args(argv)
    defaults = SMALL if args.small else dict(fraction=1.0, workers=8, batch_size=512, warmup=3)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    load_before = os.getloadavg()[0]  # others' jobs on a shared machine skew every figure
    device = torch.device(args.device)
    data = load_dataset(args.data, fraction=args.fraction).without_test()
    config = bench_config(args.net, args.batch_size)
    params = count_parameters(build_model(config, data.image_shape, data.num_classes))
    eng = engine(config, data, device, args.warmup)
    dl = dataloader(config, data, device, args.workers, args.warmup)
    out = {
        "command": " ".join(["python", *sys.argv]), "date": datetime.date.today().isoformat(),
        "machine": machine(device), "load_avg_1m": [load_before, os.getloadavg()[0]],
        "torch": torch.__version__, "net": args.net, "params": params,
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
