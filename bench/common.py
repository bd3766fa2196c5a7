"""What bench/throughput.py and bench/packing.py share: the nets, the config they train, the
data they default to, and the provenance every figure is written with.

No torchvision here: packing.py's spawned children import this module too.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import sys
from pathlib import Path

import torch

from hpo.config import complete
from hpo.data import Dataset

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


def bench_config(net: str, batch_size: int, epochs: int = 1, seed: int = 0) -> dict:
    """The complete trial config both paths train. lr is low so no net diverges mid-benchmark."""
    return complete({**NETS[net], "epochs": epochs, "batch_size": batch_size, "seed": seed,
                     "aug_flip": True, "aug_crop": 4, "optimizer": "sgd", "lr": 0.01})


def machine(device: torch.device) -> str:
    """The GPU's name, or the CPU's model and the cores this process may use."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {cpu_model()}, {len(os.sched_getaffinity(0))} cores"


def cpu_model() -> str:
    """The CPU's model as /proc/cpuinfo names it (else what the platform module says)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def warmup_slice(data: Dataset, images: int) -> Dataset:
    """The first `images` training images (and a few validation ones, as that pass is untimed)
    under a new fingerprint, since the engine caches device copies by it."""
    return dataclasses.replace(data, x_train=data.x_train[:images], y_train=data.y_train[:images],
                               x_val=data.x_val[:64], y_val=data.y_val[:64],
                               fingerprint=data.fingerprint + "-warmup")


def parse_run_options(p, argv: list[str] | None, small: dict, full: dict):
    """Add --device and --json to the parser `p`, parse `argv` with the options left unset
    taken from the --small form or the full run, and note the load average first:
    (args, the device, the 1-minute load average before the run)."""
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", metavar="PATH", help="also write the figures here as JSON")
    args = p.parse_args(argv)
    fill_defaults(args, small, full)
    # others' jobs on a shared machine skew every figure: each says what load it saw
    return args, torch.device(args.device), os.getloadavg()[0]


def fill_defaults(args, small: dict, full: dict) -> None:
    """Options left unset take the --small form's value, or the full run's."""
    for key, value in (small if args.small else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def provenance(device: torch.device, load_before: float) -> dict:
    """Where and when a figure was measured: the command, date, machine, load, torch."""
    return {"command": " ".join(["python", *sys.argv]), "date": datetime.date.today().isoformat(),
            "machine": machine(device), "load_avg_1m": [load_before, os.getloadavg()[0]],
            "torch": torch.__version__}
