"""What each trial asks Ray for: CPUs, and a share of a GPU that its memory decides."""

from __future__ import annotations

from collections import Counter

import ray
import torch
from rich.console import Console

from hpo import compat, train
from hpo.data import Dataset
from hpo.errors import Infeasible
from hpo.options import SearchOptions
from hpo.packing import Packer, device_bytes, predict_bytes
from hpo.space import Space, random_configs

GPUS_PER_TRIAL = 0.25  # with GPUs, when no measurement decides: four trials per GPU


def trial_resources(options: SearchOptions, cluster: dict, console: Console,
                    packer: Packer | None = None, study: str = ""):
    """What each trial asks Ray for, and how many such trials fit the cluster as it is now.

    With GPUs and no --gpus-per-trial, `packer` gives each trial its own fraction of a GPU,
    from its predicted memory (a callable Tune calls per trial); without one, GPUS_PER_TRIAL.
    CPUs only otherwise. An explicit --gpus-per-trial is asked for even when no GPU is up yet:
    on an autoscaling cluster the request is what makes the autoscaler add GPU nodes.
    """
    gpus, cpus = cluster.get("GPU", 0), cluster.get("CPU", 0)
    resources = {"cpu": options.cpus_per_trial}
    slots = int(cpus // options.cpus_per_trial)
    if packer is not None and gpus and options.gpus_per_trial is None:
        def share(config: dict) -> dict[str, float]:
            config = {k: v for k, v in config.items() if k != "trial"}  # a label, no setting
            return {"CPU": options.cpus_per_trial, "GPU": packer.fraction(config)}

        return (compat.per_trial_resources(study, share),
                min(slots, int(gpus * packer.max_per_gpu)))
    per = options.gpus_per_trial
    if per is None:
        per = GPUS_PER_TRIAL if gpus else 0
    if per:
        resources["gpu"] = per
        if gpus:
            slots = min(slots, int(gpus / per))
        else:
            console.print(f"no GPU in the cluster yet: trials ask for {per} GPU each, for the "
                          "autoscaler to add GPU nodes (set --concurrency for how many at once)")
    return resources, slots


def probe(space: Space, data: Dataset, options: SearchOptions,
          console: Console) -> Packer | None:
    """Measure a few configs' peak memory on one whole GPU of the cluster (the starting points
    and four random draws) and return a Packer calibrated by them; None when no GPU answers
    within ten minutes or the node has no CUDA (then trials get GPUS_PER_TRIAL each)."""
    configs = [space.point(n) for n in space.starting_points]
    configs += random_configs(space, 4, seed=options.seed)
    measure = ray.remote(num_gpus=1, num_cpus=options.cpus_per_trial)(_measure_memory)
    try:
        answer = ray.get(measure.remote(configs, data.image_shape, data.num_classes),
                         timeout=600)
    except (ray.exceptions.GetTimeoutError, ray.exceptions.RayError) as exc:
        console.print(f"[yellow]warning[/]: no GPU measured memory ({type(exc).__name__}); "
                      f"trials get {GPUS_PER_TRIAL} GPU each")
        return None
    if answer is None:
        return None
    total, measured = answer
    packer = Packer(total, device_bytes(data), data.image_shape, data.num_classes,
                    max_per_gpu=options.trials_per_gpu)
    for config, peak in measured:
        packer.observe(config, peak, data_bytes=0)
    shares = Counter(round(1 / packer.fraction(c)) for c, _ in measured)
    console.print(f"GPU memory {total / 2**30:.0f} GiB; measured {len(measured)} configs "
                  f"(up to {max((p for _, p in measured), default=0) / 2**30:.1f} GiB each): "
                  + ", ".join(f"{n} at {k} per GPU" for k, n in sorted(shares.items())))
    return packer


def _measure_memory(configs, image_shape, num_classes):
    """On a GPU worker: (the GPU's total bytes, [(config, peak bytes)]) or None without CUDA."""
    if not torch.cuda.is_available():
        return None
    measured = []
    for config in configs:
        try:
            measured.append((config, train.peak_memory(config, image_shape, num_classes)))
        except (Infeasible, torch.OutOfMemoryError):
            continue
    return torch.cuda.get_device_properties(0).total_memory, measured


def feasibility(data: Dataset, packer: Packer | None, cluster: dict, slots: int):
    """A check of a drawn config, before it becomes a trial: it raises model.Infeasible when
    the config cannot be built for the data's images, or when its predicted memory exceeds
    what one trial can have (a whole GPU's memory where trials run on GPUs that hpo measured;
    on CPUs, the cluster's memory shared by the trials that run at once)."""
    shape, classes = data.image_shape, data.num_classes
    if packer is not None:
        limit, where = packer.gpu_bytes, "of one GPU"
        need = packer.need
    else:
        limit = cluster.get("memory", 0) / max(1, slots)
        where = (f"per trial ({cluster.get('memory', 0) / 2**30:.0f} GiB of memory shared by "
                 f"{max(1, slots)} trials at once)")
        data_bytes = device_bytes(data)

        def need(config):
            # the prediction counts bf16 activations; on the CPU they are fp32
            return data_bytes + 2 * predict_bytes(config, shape, classes)

    def check(config):
        n = need(config)  # raises Infeasible for a config that cannot be built
        if limit and n > limit:
            raise Infeasible(f"needs about {n / 2**30:.1f} GiB, more than the "
                             f"{limit / 2**30:.1f} GiB {where}", ("batch_size", "width", "head"),
                             n / limit - 1)
    return check
