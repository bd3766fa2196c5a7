"""Ray's side of one trial: run_trial with a report that forwards to Tune, and checkpoints."""

from __future__ import annotations

import math
import os
import tempfile
import time

import ray
import torch
from ray import tune

from hpo import checkpoint, train
from hpo.data import Dataset, decode_count
from hpo.files import replace_file
from hpo.packing import CONTEXT_BYTES
from hpo.registry import sign as direction
from hpo.status import Status


def train_trial(config: dict, data: Dataset, metric: str, mode: str, rungs: tuple[int, ...] = (),
                checkpoint_every: float = 120.0, resume: dict[int, str] | None = None) -> None:
    """Ray's side of a trial: run_trial with a report that forwards to Tune.

    A checkpoint (the weights, the best epoch's weights, and what training needs to go on) is
    written at each ASHA rung (`rungs`: where the scheduler may end the trial), at the last
    epoch, and otherwise at most every `checkpoint_every` seconds of training: never at every
    improvement. A trial Tune starts again after a crash continues from its latest checkpoint;
    so does a trial an earlier run of the study left unfinished (`resume`: trial number ->
    checkpoint URI).
    """
    number = config["trial"]
    # "rerun": the selection's seed of a config run again (hpo.tuning.reruns)
    config = {k: v for k, v in config.items() if k not in ("trial", "rerun")}
    gpus = ray.get_runtime_context().get_assigned_resources().get("GPU", 0)
    if torch.cuda.is_available() and 0 < gpus < 1:
        # a trial that outgrows its share fails alone ("oom") instead of starving the
        # trials beside it on the GPU
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(max(0.05, gpus - CONTEXT_BYTES / total))
    # the IP names the machine; the node id tells apart two raylets on one machine
    node = f"{ray.util.get_node_ip_address()}/{ray.get_runtime_context().get_node_id()[:8]}"
    found = tune.get_checkpoint()
    if found is None and (resume or {}).get(number):
        found = tune.Checkpoint(resume[number])
    try:
        state = _load(found)
    except Exception as exc:  # gone or unreadable: the trial starts again from epoch 1
        print(f"trial {number}: cannot continue from {found} ({exc!r})")
        state = found = None
    sign = direction(mode)
    best = {"value": None, "epoch": 0, "weights": None}
    if state:
        best.update(value=state.pop("best"), epoch=state.pop("best_epoch"),
                    weights=state.pop("best_weights"))
    last_saved = [time.monotonic()]

    def report(metrics: dict, model=None, state=None) -> None:
        metrics = {**metrics, "node": node, "data": data.fingerprint, "decoded": decode_count()}
        epoch, value = metrics.get("epoch", 0), metrics.get(metric)
        if epoch:
            # the step TensorBoard and the trackers plot against (else Tune's count of
            # reports, which a trial continued from a checkpoint in a later run restarts)
            metrics["timesteps_total"] = epoch
        if model is not None and value is not None and math.isfinite(value) and (
                best["value"] is None or sign * value > sign * best["value"]):
            # a copy on the host: the best epoch's weights outlive the epochs after it
            best.update(value=value, epoch=epoch, weights={
                k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()})
        due = epoch in rungs or metrics.get("status") == Status.COMPLETED or (
            time.monotonic() - last_saved[0] >= checkpoint_every)
        if model is None or state is None or not due:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="hpo-ckpt-") as folder:
            checkpoint.save(folder, model.state_dict(), state(), best, metrics)
            # Tune copies the folder to the trial's storage before report returns
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
        last_saved[0] = time.monotonic()

    if state and state["epoch"] >= config["epochs"]:
        # continued from the checkpoint of its last epoch (the driver was lost before it
        # heard the end): that epoch's report once more ends the trial as it ended
        tune.report(state["metrics"], checkpoint=found)
        return
    train.run_trial(config, data, report, resume=state)


def _load(found: tune.Checkpoint | None) -> dict | None:
    """The training state in a Tune checkpoint (hpo.checkpoint.load), None without one."""
    if found is None:
        return None
    with found.as_directory() as folder:
        return checkpoint.load(folder)


def best_weights(found: tune.Checkpoint, destination: str | os.PathLike) -> None:
    """Copy the best epoch's weights in a trial's checkpoint to `destination` (whole)."""
    with found.as_directory() as folder:
        with open(checkpoint.best_file(folder), "rb") as src, replace_file(destination) as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
