"""Trials share a GPU by their memory: the prediction tracks what backward really keeps, the
fractions never add up to more memory than the GPU has, and Tune gives each trial its own."""

import dataclasses
from pathlib import Path

import pytest
import ray
import torch
from ray import tune
from rich.console import Console

from hpo.errors import Infeasible
from hpo.model import build_model
from hpo.options import SearchOptions
from hpo.packing import CONTEXT_BYTES, Packer, predict_bytes
from hpo.space import load_space, random_configs
from hpo.train import peak_memory
from hpo.tuning.placement import probe, trial_resources
from hpo.tuning.reruns import Listed

ROOT = Path(__file__).parents[1]
SPACE = load_space(ROOT / "spaces/cifar10.py")
FEASIBLE = []
for _config in random_configs(SPACE, 40, seed=3):
    try:
        build_model(_config, (3, 32, 32), 10)
        FEASIBLE.append(_config)
    except Infeasible:
        pass
GiB = 1 << 30


def saved_for_backward(config, batch: int) -> int:
    """Elements autograd really saves for backward in one fp32 training step on the CPU."""
    model = build_model(config, (3, 32, 32), 10).train()
    seen, total = set(), [0]

    def pack(t):
        key = (t.untyped_storage().data_ptr(), t.numel())
        if key not in seen and not isinstance(t, torch.nn.Parameter):
            seen.add(key)
            total[0] += t.numel()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.randn(batch, 3, 32, 32)).sum().backward()
    return total[0]


@pytest.mark.parametrize("name", sorted(SPACE.starting_points))
def test_prediction_tracks_what_backward_saves(name):
    config = {**SPACE.point(name), "batch_size": 16}
    params = sum(p.numel() for p in build_model(config, (3, 32, 32), 10).parameters())
    weights = 4 * params * 4  # fp32 weights, grads, and two optimizer slots at most
    activations = predict_bytes(config, (3, 32, 32), 10) - weights
    saved = 2 * saved_for_backward(config, 16)  # bf16 on a GPU
    # the same order of magnitude as autograd's own record: calibration does the rest
    assert saved / 3 <= activations <= saved * 3 + 2 * 3 * 2048 * 32 * 32 * 64


def test_prediction_grows_with_batch_and_width_and_refuses_infeasible():
    config = SPACE.point("report000-final")
    # small batches: evaluation's large batches set the peak; large ones: training
    sizes = [predict_bytes({**config, "batch_size": b}, (3, 32, 32), 10)
             for b in (32, 128, 512, 2048, 8192)]
    assert sizes == sorted(sizes) and sizes[-1] > 4 * sizes[0]
    larger = predict_bytes({**config, "batch_size": 32}, (3, 64, 64), 10)
    assert larger > 3 * sizes[0]
    with pytest.raises(Infeasible):
        predict_bytes(config, (3, 4, 4), 10)


def test_fractions_never_oversubscribe_memory_and_follow_measurements():
    packer = Packer(gpu_bytes=16 * GiB, data_bytes=GiB // 4, image_shape=(3, 32, 32),
                    num_classes=10, max_per_gpu=8)
    for config in FEASIBLE:
        k = round(1 / packer.fraction(config))
        assert k * packer.need(config) <= packer.gpu_bytes or k == 1
        assert packer.need(config) >= CONTEXT_BYTES + packer.data_bytes
    # a small net on a big GPU: as many as allowed; a config bigger than the GPU: a whole one
    basenet = SPACE.point("basenet")
    assert packer.fraction(basenet) == 1 / 8
    huge = {**SPACE.point("report002-best"), "batch_size": 512}
    assert dataclasses.replace(packer, gpu_bytes=2 * GiB).fraction(huge) == 1.0
    # measuring more than predicted only ever shrinks the shares
    before = {repr(c): packer.fraction(c) for c in FEASIBLE}
    packer.observe(huge, 8 * predict_bytes(huge, (3, 32, 32), 10) + packer.data_bytes)
    assert packer.ratio == pytest.approx(8)
    assert all(packer.fraction(c) >= before[repr(c)] for c in FEASIBLE)
    assert any(packer.fraction(c) > before[repr(c)] for c in FEASIBLE)
    packer.observe(basenet, packer.data_bytes)  # less than predicted: ratio stays
    assert packer.ratio == pytest.approx(8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_measured_peak_stays_within_the_calibrated_need():
    config = SPACE.point("report000-final")
    packer = Packer(80 * GiB, 0, (3, 32, 32), 10)
    peak = peak_memory(config, (3, 32, 32), 10)
    assert 0 < peak
    packer.observe(config, peak, data_bytes=0)
    assert packer.need(config) >= peak


@pytest.mark.e2e
def test_tune_gives_each_trial_the_fraction_its_config_needs(tmp_path):
    def reports_its_share(config):
        share = ray.get_runtime_context().get_assigned_resources().get("GPU", 0)
        tune.report({"epoch": 1, "epochs": 1, "val_acc": 0.5, "status": "completed",
                     "share": share})

    space = dataclasses.replace(load_space(ROOT / "tests/spaces/tiny.py"), trials=6,
                                max_epochs=1, grace_period=1, starting_points={})
    configs = random_configs(space, 20)
    needs = sorted(predict_bytes(c, (3, 32, 32), 10) for c in configs)
    # a GPU that fits four of the smallest trials but fewer of the largest
    packer = Packer(gpu_bytes=4 * needs[0] + 1, data_bytes=0, image_shape=(3, 32, 32),
                    num_classes=10, margin=1.0, context_bytes=0)
    assert packer.fraction(max(configs, key=packer.need)) > 0.25
    study = tmp_path / "packed"
    # Ray on this CPU-only machine, told it has one GPU: resources are booked all the same
    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        quiet = Console(quiet=True)
        if not torch.cuda.is_available():  # the probe's fallback: nothing to measure with
            assert probe(space, _FakeData(), SearchOptions(), quiet) is None
        resources, slots = trial_resources(SearchOptions(), ray.cluster_resources(), quiet,
                                            packer, "packed")
        assert slots == 4
        trainable = tune.with_resources(reports_its_share, resources)
        points = [{**c, "trial": n} for n, c in enumerate(configs[:6])]
        tuner = tune.Tuner(trainable, tune_config=tune.TuneConfig(
            search_alg=Listed(points),
            num_samples=len(points), max_concurrent_trials=slots),
            run_config=tune.RunConfig(storage_path=str(study), verbose=0))
        results = tuner.fit()
    finally:
        ray.shutdown()
    shares = [({k: v for k, v in r.config.items() if k != "trial"}, r.metrics["share"])
              for r in results]
    assert len(shares) == 6
    # Ray keeps resources to four decimals
    assert [s for _, s in shares] == pytest.approx([packer.fraction(c) for c, _ in shares],
                                                   abs=1e-4)


class _FakeData:
    """All a probe reads of the data before it finds no GPU to measure on."""

    image_shape, num_classes = (3, 32, 32), 10
