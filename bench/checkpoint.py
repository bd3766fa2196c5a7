"""What a trial's checkpoint costs, against what an epoch of the same net costs.

For each starting point of a space file, trains one epoch with `hpo.train.run_trial` on the
data (its own `train_seconds` and the wall time of the epoch with validation), then writes the
checkpoint a trial writes (`hpo.checkpoint.save`: weights, optimizer state, the best epoch's
weights) into a temporary folder and copies it to a second folder on the same disk, as Tune
copies it into the study's storage. Prints, per net, the checkpoint's size and seconds, the
epoch's seconds, the share a checkpoint at every epoch would take, and the share at one
checkpoint every `--every` seconds (what `hpo search --checkpoint-every` sets).

    python bench/checkpoint.py --fraction 0.02                 # CPU, a few minutes
    python bench/checkpoint.py --json checkpoint.json          # full CIFAR-10 on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

import torch
from common import DEFAULT_DATA, REPO, provenance

from hpo import checkpoint
from hpo.data import load_dataset
from hpo.space import load_space
from hpo.train import run_trial


def measure(config: dict, data, device: torch.device, repeats: int) -> dict:
    captured: dict = {}

    def report(metrics, model=None, state=None):
        captured.update(metrics=metrics, model=model, state=state)

    t0 = time.perf_counter()
    final = run_trial({**config, "epochs": 1}, data, report, device)
    epoch_s = time.perf_counter() - t0
    if final["status"] != "completed":
        return {"status": final["status"], "reason": final.get("reason")}
    model, state = captured["model"], captured["state"]
    # the worst case: the best epoch is not the last, so best.pt is written too
    weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    best = {"value": 0.0, "epoch": 0, "weights": weights}
    times, size = [], 0
    with tempfile.TemporaryDirectory(dir=REPO) as storage:
        for i in range(repeats):
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="hpo-ckpt-") as folder:
                checkpoint.save(folder, model.state_dict(), state(), best)
                shutil.copytree(folder, os.path.join(storage, f"checkpoint_{i:06d}"))
            times.append(time.perf_counter() - t0)
        size = sum(f.stat().st_size for f in os.scandir(os.path.join(storage,
                                                                     "checkpoint_000000")))
    ckpt_s = sorted(times)[len(times) // 2]  # the median
    return {"status": "completed", "params": final["params"], "epoch_s": round(epoch_s, 3),
            "train_s": round(final["train_seconds"], 3), "checkpoint_s": round(ckpt_s, 4),
            "checkpoint_bytes": size, "checkpoint_mb": round(size / 2**20, 1),
            "share_every_epoch": round(ckpt_s / (epoch_s + ckpt_s), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default=str(REPO / "spaces/cifar10.py"))
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--fraction", type=float, default=1.0)
    parser.add_argument("--every", type=float, default=120.0,
                        help="seconds between checkpoints, for the share at that interval")
    parser.add_argument("--repeats", type=int, default=5, help="checkpoints timed per net")
    parser.add_argument("--small", action="store_true",
                        help="the CPU smoke form: 2%% of the data, 2 checkpoints per net")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    if args.small:
        args.fraction, args.repeats = min(args.fraction, 0.02), 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    load = os.getloadavg()[0]
    space = load_space(args.space)
    data = load_dataset(args.data, fraction=args.fraction, val_fraction=space.val_fraction,
                        image_size=space.image_size, channels=space.channels)
    rows = {}
    for name in space.starting_points:
        row = measure(space.point(name), data, device, args.repeats)
        if row["status"] == "completed":
            row["share_at_every"] = round(row["checkpoint_s"] / args.every, 5)
        rows[name] = row
        print(f"{name}: {row}", flush=True)
    out = {**provenance(device, load), "every_s": args.every, "train_images": len(data.x_train),
           "nets": rows}
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
