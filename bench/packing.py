"""Aggregate training throughput of k trials sharing one device at once (trial packing).

For each k in `--k`, k spawned processes each run `hpo.train.run_trial` on the same config (the
VGG-style net of bench/throughput.py unless `--net`), `--epochs` epochs on the same data. Every
process first loads the data, runs a short untimed warm-up trial and copies the training split to
the device; then all wait at one barrier and start together. Reported per k:

  aggregate img/s = (images trained, summed over the k processes) / (last end - first start),
  i.e. over the wall time of the slowest; that wall includes each epoch's validation pass, as in
  a study. Also the ratio to k=1 and, on CUDA, each trial's peak memory (max_memory_allocated,
  which includes its copy of the data set).

Data: the parent calls hpo.data.load_dataset once, which decodes and fills the on-disk cache
($HPO_CACHE); each child calls it again and gets a cache hit (no decode), instead of receiving
pickled arrays. On the CPU each child gets cores // k intra-op threads so k processes do not
oversubscribe the cores; on CUDA threads are left alone.

    python bench/packing.py                      # k = 1 2 4, 3 epochs of full CIFAR-10
    python bench/packing.py --small              # CPU smoke form: fraction 0.02, batch 64, k 1 2
    python bench/packing.py --k 1 2 4 8 --json packing.json
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.multiprocessing as mp
from common import (
    DEFAULT_DATA,
    NETS,
    bench_config,
    machine,
    parse_run_options,
    provenance,
    warmup_slice,
)

from hpo.data import load_dataset
from hpo.train import run_trial, to_device

SMALL = dict(fraction=0.02, batch_size=64, k=[1, 2], epochs=1, warmup=1)
FULL = dict(fraction=1.0, batch_size=512, k=[1, 2, 4], epochs=3, warmup=3)


def trial(rank: int, k: int, args: argparse.Namespace, config: dict, barrier, results) -> None:
    """One packed trial: set up untimed, wait for the others, train, send back the figures."""
    try:
        device = torch.device(args.device)
        cuda = device.type == "cuda"
        if not cuda:
            torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // k))
        data = load_dataset(args.data, fraction=args.fraction).without_test()  # a cache hit
        if args.warmup:  # a one-epoch trial on the first few batches, under its own fingerprint
            warm = warmup_slice(data, args.warmup * config["batch_size"])
            run_trial({**config, "epochs": 1}, warm, lambda *a, **k: None, device)
        to_device(data, device)  # the host->device copy stays untimed; run_trial reuses it
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        barrier.wait(timeout=args.timeout)
        start = time.time()
        rows: list[dict] = []
        final = run_trial(config, data, lambda m, *a, **k: rows.append(m), device)
        end = time.time()
        epochs = [r for r in rows if "train_seconds" in r]  # a diverged trial's last row has none
        results.put({
            "rank": rank, "status": final["status"], "start": start, "end": end,
            "images": round(sum(r["img_per_s"] * r["train_seconds"] for r in epochs)),
            "img_per_s": [r["img_per_s"] for r in epochs],
            "peak_mib": torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None})
    except BaseException:  # a child that dies silently would leave the parent waiting
        barrier.abort()
        results.put({"rank": rank, "error": traceback.format_exc()})


def run_k(k: int, args: argparse.Namespace, config: dict) -> dict:
    ctx = mp.get_context("spawn")  # CUDA cannot be used in forked children
    barrier, results = ctx.Barrier(k), ctx.Queue()
    procs = [ctx.Process(target=trial, args=(rank, k, args, config, barrier, results))
             for rank in range(k)]
    for p in procs:
        p.start()
    rows: list[dict] = []
    while len(rows) < k:
        try:
            rows.append(results.get(timeout=5))
        except queue.Empty:
            if not any(p.is_alive() for p in procs):
                sys.exit(f"k={k}: {k - len(rows)} trial process(es) died without a result")
    for p in procs:
        p.join()
    if errors := [r["error"] for r in rows if "error" in r]:
        sys.exit(f"k={k}: a trial process failed:\n{errors[0]}")
    if bad := [r["status"] for r in rows if r["status"] != "completed"]:
        sys.exit(f"k={k}: trials ended {bad}")
    wall = max(r["end"] for r in rows) - min(r["start"] for r in rows)
    return {"k": k, "wall_s": wall, "images": sum(r["images"] for r in rows),
            "aggregate_img_per_s": sum(r["images"] for r in rows) / wall,
            "per_trial_img_per_s": [sum(r["img_per_s"]) / len(r["img_per_s"]) for r in rows],
            "start_spread_s": max(r["start"] for r in rows) - min(r["start"] for r in rows),
            "peak_mib": [r["peak_mib"] for r in rows]}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--k", type=int, nargs="+", help="trials at once (default 1 2 4; --small 1 2)")
    p.add_argument("--epochs", type=int, help="epochs per trial (default 3; --small 1)")
    p.add_argument("--net", choices=sorted(NETS), default="vgg")
    p.add_argument("--data", default=str(DEFAULT_DATA),
                   help="dataset (default: ../shared/datasets/cifar10 next to the repository)")
    p.add_argument("--fraction", type=float, help="share of the training split (default 1.0; "
                   "--small 0.02)")
    p.add_argument("--batch-size", type=int, help="default 512; --small 64")
    p.add_argument("--warmup", type=int, help="untimed steps per process (default 3; --small 1)")
    p.add_argument("--timeout", type=float, default=900, help="seconds to wait at the barrier")
    p.add_argument("--small", action="store_true",
                   help="CPU smoke form: fraction 0.02, batch 64, k 1 2, 1 epoch, 1 warm-up "
                        "step (explicit options win)")
    args, device, load_before = parse_run_options(p, argv, SMALL, FULL)
    data = load_dataset(args.data, fraction=args.fraction)  # decodes once; children hit the cache
    config = bench_config(args.net, args.batch_size, epochs=args.epochs)
    print(f"machine: {machine(device)}\ntorch:   {torch.__version__}\n"
          f"net:     {args.net}, batch {args.batch_size}, {len(data.y_train):,} training images, "
          f"{args.epochs} epoch(s) per trial")
    runs = []
    for k in args.k:
        r = run_k(k, args, config)
        r["ratio_to_k1"] = r["aggregate_img_per_s"] / runs[0]["aggregate_img_per_s"] if runs \
            else 1.0
        runs.append(r)
        mem = "" if r["peak_mib"][0] is None else \
            ", peak GPU memory per trial " + " ".join(f"{m:,.0f}" for m in r["peak_mib"]) + " MiB"
        print(f"k={k}: aggregate {r['aggregate_img_per_s']:,.0f} img/s, "
              f"ratio {r['ratio_to_k1']:.2f}x k={runs[0]['k']}, wall {r['wall_s']:.1f} s, "
              "per trial "
              + " ".join(f"{x:,.0f}" for x in r["per_trial_img_per_s"]) + f" img/s{mem}")
    out = {**provenance(device, load_before), "net": args.net, "batch_size": args.batch_size,
           "epochs": args.epochs, "train_images": len(data.y_train), "runs": runs}
    print(f"1-min load average {load_before:.1f} before, {out['load_avg_1m'][1]:.1f} after")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
