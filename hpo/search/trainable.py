"""Ray's side of one trial: run_trial with a report that forwards to Tune."""

from __future__ import annotations

import math
import os
import tempfile

import ray
import torch
from ray import tune

from hpo import train
from hpo.data import Dataset, decode_count
from hpo.packing import CONTEXT_BYTES


def train_trial(config: dict, data: Dataset, metric: str, mode: str,
                finished: dict[str, dict] | None = None) -> None:
    """Ray's side of a trial: run_trial with a report that forwards to Tune, and a checkpoint
    whenever the metric improves (Tune keeps the best one, which is also the latest): the
    weights, and what training needs to go on from there. A trial Tune starts again, after a
    crash or a resumed search, continues from that checkpoint instead of from epoch 1.

    `finished` holds the last result of trials a resumed study already finished: Tune's
    experiment snapshot can predate their end, and they must not train again, so such a
    trial only reports its result once more.
    """
    replay = (finished or {}).get(tune.get_context().get_trial_id())
    if replay is not None:
        tune.report(replay)
        return
    gpus = ray.get_runtime_context().get_assigned_resources().get("GPU", 0)
    if torch.cuda.is_available() and 0 < gpus < 1:
        # a trial that outgrows its share fails alone ("oom") instead of starving the
        # trials beside it on the GPU
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(max(0.05, gpus - CONTEXT_BYTES / total))
    # the IP names the machine; the node id tells apart two raylets on one machine
    node = f"{ray.util.get_node_ip_address()}/{ray.get_runtime_context().get_node_id()[:8]}"
    resume = _load(tune.get_checkpoint())
    best = [resume.pop("best") if resume else None]

    def report(metrics: dict, model=None, state=None) -> None:
        metrics = {**metrics, "node": node, "data": data.fingerprint, "decoded": decode_count()}
        value = metrics.get(metric)
        if model is None or value is None or not math.isfinite(value) or (
            best[0] is not None and (value <= best[0] if mode == "max" else value >= best[0])
        ):
            tune.report(metrics)
            return
        best[0] = value
        # Tune copies the checkpoint to its storage before report returns
        with tempfile.TemporaryDirectory(prefix="hpo-ckpt-") as folder:
            torch.save(model.state_dict(), os.path.join(folder, "model.pt"))
            if state is not None:
                torch.save({**state(), "best": value}, os.path.join(folder, "train.pt"))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    train.run_trial(config, data, report, resume=resume)


def _load(checkpoint: tune.Checkpoint | None) -> dict | None:
    """The training state in a checkpoint, with its weights under "model"; None without."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        if not os.path.isfile(os.path.join(folder, "train.pt")):
            return None
        resume = torch.load(os.path.join(folder, "train.pt"), map_location="cpu",
                            weights_only=True)
        resume["model"] = torch.load(os.path.join(folder, "model.pt"), map_location="cpu",
                                     weights_only=True)
    return resume
