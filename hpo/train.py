"""One trial: train the CNN a config describes on data already decoded, report every epoch.

No Ray here. The search driver passes `report` (tune.report behind a thin adapter); tests pass
a list's append. Data lives on the trial's device as uint8 and is augmented there, per sample,
a batch at a time: no DataLoader, no host work per step.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from hpo import features
from hpo.backbone import eval_batch, param_groups
from hpo.data import Dataset
from hpo.device import EVAL_BATCH, DeviceData, preprocess, to_device
from hpo.errors import Infeasible
from hpo.model import build_model, count_parameters
from hpo.registry import OPTIMIZERS, PER_EPOCH_SCHEDULES, SCHEDULES
from hpo.status import Status

Report = Callable[..., None]  # report(metrics: dict, model=None, state=None)


def make_optimizer(model: nn.Module, config: Mapping[str, Any]) -> torch.optim.Optimizer:
    """The optimizer a config names (hpo.registry.OPTIMIZERS), with its learning rate, weight
    decay and, where it takes them, momentum and Nesterov."""
    spec = OPTIMIZERS[config["optimizer"]]
    kwargs = {"lr": config["lr"], "weight_decay": config["weight_decay"]}
    if spec.momentum:
        kwargs["momentum"] = config["momentum"]
    if spec.nesterov:
        kwargs["nesterov"] = config["nesterov"] and config["momentum"] > 0
    return getattr(torch.optim, spec.torch_class)(param_groups(model, config), **kwargs)


def lr_factor(config: Mapping[str, Any], step: int, steps_per_epoch: int) -> float:
    """Multiplier on the base learning rate at optimisation step `step` (0-based)."""
    total = config["epochs"] * steps_per_epoch
    warmup = config["warmup_epochs"] * steps_per_epoch
    # 1) linear warmup from ~0, whatever the schedule after it
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1.0, total - warmup)  # progress after warmup, 0 -> 1
    # 2) the schedule's shape (hpo.registry.SCHEDULES); plateau's decays are applied per
    # epoch by the caller
    return SCHEDULES[config["schedule"]](config, step, steps_per_epoch, t)


@torch.no_grad()
def outputs(model: nn.Module, x: torch.Tensor, dev: DeviceData, config: Mapping[str, Any]
            ) -> Iterator[tuple[slice, torch.Tensor]]:
    """`model`'s outputs (logits, float32 [n, K]) on uint8 images `x` as evaluation feeds
    them, a batch at a time: (the batch's slice of `x`, its outputs)."""
    model.eval()
    cuda = x.is_cuda
    step = EVAL_BATCH if x.is_floating_point() else eval_batch(config, x.shape[1:], EVAL_BATCH)
    for i in range(0, len(x), step):
        xb = preprocess(x[i : i + step], dev, config, torch.float32)
        with torch.autocast("cuda", torch.bfloat16, enabled=cuda):
            out = model(xb).float()
        yield slice(i, i + step), out


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, dev: DeviceData,
             config: Mapping[str, Any]) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of `model` on uint8 images `x` with labels `y`."""
    loss = torch.zeros((), device=x.device, dtype=torch.float64)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for batch, out in outputs(model, x, dev, config):
        yb = y[batch]
        loss += F.cross_entropy(out, yb, reduction="sum")
        correct += (out.argmax(1) == yb).sum()
    n = max(1, len(x))
    return loss.item() / n, correct.item() / n


def probabilities(model: nn.Module, x: torch.Tensor, dev: DeviceData,
                  config: Mapping[str, Any]) -> torch.Tensor:
    """Softmax probabilities, float32 [N, K], of `model` on uint8 images `x`, batched and
    preprocessed as `evaluate` does."""
    return torch.cat([torch.softmax(out, dim=1) for _, out in outputs(model, x, dev, config)])


def scores(probs: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of probabilities `probs` [N, K] (a model's, or an
    ensemble's average) for labels `y`."""
    n = max(1, len(y))
    # a probability that underflowed to 0 costs what float32's smallest one would, not inf
    log_p = probs.double().clamp_min(torch.finfo(torch.float32).tiny).log()
    return (F.nll_loss(log_p, y, reduction="sum").item() / n,
            (probs.argmax(1) == y).sum().item() / n)


def setup_training(model: nn.Module, config: Mapping[str, Any], device: torch.device):
    """The model on `device` with its optimizer, loss and the dtype batches are made in."""
    cuda = device.type == "cuda"
    model = model.to(device, memory_format=torch.channels_last if cuda
                     else torch.contiguous_format)
    # augment and normalise in bf16 on the GPU (half the memory traffic); batch shapes are
    # fixed, so cuDNN's autotuner pays for itself after the first steps
    torch.backends.cudnn.benchmark = cuda
    criterion = nn.CrossEntropyLoss(label_smoothing=config["label_smoothing"])
    return (model, make_optimizer(model, config), criterion,
            torch.bfloat16 if cuda else torch.float32)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, criterion: nn.Module,
               x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One optimisation step on a preprocessed batch; returns the loss, still on the device."""
    with torch.autocast("cuda", torch.bfloat16, enabled=x.is_cuda):
        loss = criterion(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach().float()


def peak_memory(config: Mapping[str, Any], image_shape: tuple[int, int, int],
                num_classes: int, device: str | torch.device = "cuda", steps: int = 3) -> int:
    """Bytes of GPU memory that training `config` holds at its peak, beyond the dataset:
    a few steps on random images at the config's batch size, then an evaluation batch.
    Raises Infeasible for a config that cannot be built; CUDA only."""
    device = torch.device(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_reserved(device)
    model, optimizer, criterion, dtype = setup_training(
        build_model(config, image_shape, num_classes), config, device)
    c = image_shape[0]
    dev = DeviceData(*(torch.empty(0, device=device),) * 4, num_classes=num_classes,
                     mean=torch.zeros(1, c, 1, 1, device=device),
                     std=torch.ones(1, c, 1, 1, device=device))
    x = torch.randint(0, 256, (config["batch_size"], *image_shape), dtype=torch.uint8,
                      device=device)
    y = torch.randint(0, num_classes, (config["batch_size"],), device=device)
    for _ in range(steps):
        xb = preprocess(x, dev, config, dtype, train=True)
        train_step(model, optimizer, criterion, xb, y)
    x_eval = torch.randint(0, 256, (EVAL_BATCH, *image_shape), dtype=torch.uint8, device=device)
    evaluate(model, x_eval, torch.zeros(EVAL_BATCH, dtype=torch.long, device=device), dev,
             config)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_reserved(device) - base
    del model, optimizer, x, y, x_eval
    torch.cuda.empty_cache()
    return int(peak)


def run_trial(config: Mapping[str, Any], data: Dataset, report: Report,
              device: str | torch.device | None = None,
              resume: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Train the model `config` describes for config["epochs"] epochs on `data`.

    Calls report(metrics, model, state=state) once per epoch, metrics with `epoch`,
    `epochs`, `val_acc`, `val_loss`, `train_loss`, `img_per_s`, `params`, `gpu_peak` (bytes
    the process reserved on the GPU at its peak, dataset included; None on the CPU) and
    `status` ("running", or "completed" at the last epoch); `state()` returns what `resume`
    takes, less the model's state_dict (its "model"). A config that cannot be built for the
    input is reported once with status "infeasible"; a non-finite training loss ends the
    trial as "diverged"; running out of device memory as "oom". None of these raise.
    Returns the last metrics reported. The test split is never read.

    With `resume` (a `state()` of an earlier run of the same config, plus "model"), training
    continues after that epoch as it would have gone on: the same weights, optimizer state,
    schedule position and random streams.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    torch.manual_seed(config["seed"])
    generator = torch.Generator(device=device).manual_seed(config["seed"])
    base = {"epoch": 0, "epochs": config["epochs"], "val_acc": 0.0, "val_loss": math.inf,
            "train_loss": math.nan, "img_per_s": 0.0, "params": None}

    def stop(status: str, reason: str, **metrics) -> dict[str, Any]:
        final = {**base, **metrics, "status": status, "reason": reason}
        report(final)
        return final

    try:
        model = build_model(config, tuple(data.image_shape), data.num_classes)
    except Infeasible as exc:
        return stop(Status.INFEASIBLE.value, str(exc))
    base["params"] = count_parameters(model)
    try:
        return _train(config, data, report, model, device, cuda, generator, base, stop,
                      resume)
    except (torch.OutOfMemoryError, MemoryError) as exc:
        # out of device or host memory: this config does not fit, so it is not retried
        return stop(Status.OOM.value, (str(exc).splitlines() or ["out of memory"])[0])


def _train(config, data, report, model, device, cuda, generator, base, stop,
           resume) -> dict[str, Any]:
    dev = to_device(data, device)
    if cuda:
        # a reused worker still holds the last trial's cached blocks and peak: start clean,
        # so `gpu_peak` is this trial's (what packing trials onto GPUs learns from)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    model, optimizer, criterion, dtype = setup_training(model, config, device)
    # a frozen backbone's features, computed once: then only the head (`net`) runs per batch
    net, dev, source = features.attach(model, dev, config, dtype, data.fingerprint)
    if source:
        base["features"] = source
    n = len(dev.x_train)
    batch = min(config["batch_size"], n)
    steps_per_epoch = n // batch  # drop the ragged last batch: BatchNorm needs > 1 sample
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    plateau_scale, plateau_best, plateau_wait = 1.0, math.inf, 0
    step, metrics, first = 0, base, 1
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        step, first = resume["step"], resume["epoch"] + 1
        plateau_scale, plateau_best, plateau_wait = resume["plateau"]
        generator.set_state(resume["generator"])
        torch.set_rng_state(resume["cpu_rng"])
        if cuda and resume.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(resume["cuda_rng"], device)

    def state() -> dict[str, Any]:
        # everything but the weights that the next epoch depends on (dropout draws from
        # the global streams; batches and augmentation from `generator`)
        return {"epoch": epoch, "step": step, "optimizer": optimizer.state_dict(),
                "plateau": [plateau_scale, plateau_best, plateau_wait],
                "generator": generator.get_state(), "cpu_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(device) if cuda else None}

    for epoch in range(first, config["epochs"] + 1):
        net.train()
        if cuda:
            torch.cuda.synchronize()
        t_start, t0 = time.time(), time.perf_counter()
        total = torch.zeros((), device=device)
        perm = torch.randperm(n, device=device, generator=generator)
        for i in range(steps_per_epoch):
            idx = perm[i * batch : (i + 1) * batch]
            xb = preprocess(dev.x_train[idx], dev, config, dtype, generator, train=True)
            factor = lr_factor(config, step, steps_per_epoch) * plateau_scale
            for group, lr in zip(optimizer.param_groups, base_lrs):
                group["lr"] = lr * factor
            # accumulate on the device: a .item() per step would sync the GPU every batch
            total += train_step(net, optimizer, criterion, xb, dev.y_train[idx])
            step += 1
        train_loss = total.item() / steps_per_epoch
        seconds = time.perf_counter() - t0  # .item() above synchronised the device
        if not math.isfinite(train_loss):
            return stop(Status.DIVERGED.value,
                        f"training loss became {train_loss} in epoch {epoch}", epoch=epoch,
                        train_loss=train_loss)
        val_loss, val_acc = evaluate(net, dev.x_val, dev.y_val, dev, config)
        if config["schedule"] in PER_EPOCH_SCHEDULES:
            # ReduceLROnPlateau on validation loss, counted in epochs (on the training loss
            # in a final retrain, which has no validation split)
            monitor = val_loss if len(dev.x_val) else train_loss
            if monitor < plateau_best - 1e-4:
                plateau_best, plateau_wait = monitor, 0
            else:
                plateau_wait += 1
                if plateau_wait > config["plateau_patience"]:
                    plateau_scale *= config["plateau_factor"]
                    plateau_wait = 0
        # plain strings: a report goes into checkpoints, which hold plain data only
        status = (Status.COMPLETED if epoch == config["epochs"] else Status.RUNNING).value
        metrics = {**base, "epoch": epoch, "val_acc": val_acc, "val_loss": val_loss,
                   "train_loss": train_loss, "img_per_s": steps_per_epoch * batch / seconds,
                   "train_seconds": seconds, "t_start": t_start, "t_end": time.time(),
                   "gpu_peak": torch.cuda.max_memory_reserved(device) if cuda else None,
                   "status": status}
        report(metrics, model, state=state)
    return metrics
