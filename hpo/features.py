"""Features of a frozen backbone, computed once and shared by every trial that trains a head
on them.

When a config freezes its whole backbone (frozen >= cut) and augments nothing, the backbone
is a fixed function of the images: its output for the training and validation images is the
same in every epoch and every such trial. It is computed once per (backbone, weights, cut,
input size, data, dtype) and kept in a file under $HPO_CACHE (default ~/.cache/hpo), written
atomically under a lock, so concurrent trial processes compute it once and all read it; the
trial then runs only its head, a batch of features at a time. With a global-pooling head the
features are pooled before they are stored (the head's own pooling of a 1x1 map is then the
identity), which makes them small enough to keep on the device.

HPO_FEATURE_CACHE=0 turns this off (every epoch runs the frozen backbone, as a benchmark's
uncached side does).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from hpo.augment import AUG_DEFAULTS
from hpo.backbone import eval_batch, uses_backbone
from hpo.device import EVAL_BATCH, preprocess
from hpo.files import cache_dir, replace_file
from hpo.weights import find_weights

log = logging.getLogger(__name__)

ENV_SWITCH = "HPO_FEATURE_CACHE"
_VERSION = 1  # bump when what is stored changes: old files then miss

# one entry per process: a reused worker's next trial on the same features skips the file
_memory: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}


def applies(config: Mapping[str, Any]) -> bool:
    """Whether a trial of `config` trains its head on cached features: a backbone frozen
    up to its cut, no augmentation, and the cache not switched off."""
    return (uses_backbone(config) and config["frozen"] >= config["cut"]
            and not any(config.get(k) for k in AUG_DEFAULTS)
            and os.environ.get(ENV_SWITCH, "1") != "0")


def attach(model: nn.Module, dev, config: Mapping[str, Any], dtype: torch.dtype,
           fingerprint: str) -> tuple[nn.Module, Any, str | None]:
    """(the module a batch goes through, the data as it goes in, where features came from).

    For a config the cache applies to: the head of `model` (sharing its parameters, so the
    whole `model` is what was trained), `dev` (train.DeviceData) with its images replaced by
    the backbone's features, and "computed" or "cached". Otherwise (model, dev, None).
    """
    if not applies(config):
        return model, dev, None
    key = cache_key(config, fingerprint, dtype, dev.x_train.device)
    source = "cached"
    if key not in _memory:
        _memory.clear()
        _memory[key], source = _load_or_compute(key, model[0], dev, config, dtype)
    x_train, x_val = _memory[key]
    return model[1:], dataclasses.replace(dev, x_train=x_train, x_val=x_val), source


def cache_key(config: Mapping[str, Any], fingerprint: str, dtype: torch.dtype,
              device: torch.device) -> str:
    """What the features depend on, hashed: the backbone and its weights (the file, or the
    seed of a random start), the cut, the input the backbone sees, the data, the dtype."""
    if config["pretrained"]:
        path = find_weights(config["backbone"])
        stat = path.stat()
        weights = [path.name, stat.st_size, stat.st_mtime_ns]
    else:
        weights = ["random", config["seed"], config["normalize"]]
    parts = [_VERSION, config["backbone"], weights, config["cut"], config["input_size"],
             _pooled(config), fingerprint, str(dtype), torch.device(device).type,
             torch.__version__]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]


def _pooled(config: Mapping[str, Any]) -> bool:
    return config["head"] == "gap"


def _load_or_compute(key: str, body: nn.Module, dev, config, dtype):
    folder = cache_dir()
    file = folder / f"features-{key}.pt"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / f".features-{key}.lock", "a")
    except OSError as exc:  # a read-only cache: compute for this trial alone
        log.warning("feature cache %s unusable (%s)", folder, exc)
        return _compute(body, dev, config, dtype), "computed"
    with lock:
        # the first trial computes while the others wait here, then they read its file
        fcntl.flock(lock, fcntl.LOCK_EX)
        if file.is_file():
            try:
                stored = torch.load(file, map_location=dev.x_train.device, weights_only=True)
                return (stored["x_train"], stored["x_val"]), "cached"
            except Exception as exc:  # damaged: compute again and overwrite it
                log.warning("ignoring unreadable feature cache %s (%s)", file, exc)
        features = _compute(body, dev, config, dtype)
        _write(file, {"x_train": features[0].cpu(), "x_val": features[1].cpu()})
        return features, "computed"


def _compute(body: nn.Module, dev, config, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    body.eval()
    out = []
    for x in (dev.x_train, dev.x_val):
        step = eval_batch(config, tuple(x.shape[1:]), EVAL_BATCH)
        parts = []
        with torch.no_grad():
            for i in range(0, len(x), step):
                xb = preprocess(x[i : i + step], dev, config, dtype)
                # as the uncached trial runs it: autocast on a GPU, the same pooling
                with torch.autocast("cuda", torch.bfloat16, enabled=xb.is_cuda):
                    f = body(xb)
                    if _pooled(config):
                        f = F.adaptive_avg_pool2d(f, 1)
                parts.append(f.contiguous())
        if parts:
            out.append(torch.cat(parts))
        else:  # a final retrain has no validation images
            out.append(torch.empty(0, device=x.device, dtype=dtype))
    return out[0], out[1]


def _write(file: Path, tensors: dict[str, torch.Tensor]) -> None:
    try:
        with replace_file(file) as f:  # readers see no file or the whole file
            torch.save(tensors, f)
    except OSError as exc:  # the next trial computes them again
        log.warning("could not write feature cache %s (%s)", file, exc)
