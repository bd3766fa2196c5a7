"""bench/throughput.py, bench/packing.py, bench/checkpoint.py, bench/ensemble.py and the
others here run end to end in their --small CPU form.

Only that they run and print their figures: no timing is asserted, since speed on a shared CI
machine says nothing about the code. A generated dataset keeps each run to a few seconds.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY, add_trial, begun, write_board, write_parquet_dataset
from hpo import views

pytestmark = pytest.mark.bench

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_parquet_dataset(tmp_path_factory.mktemp("bench_data"), n_train=400, n_test=0)


def run(script: str, *args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HPO_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, str(REPO / "bench" / script), "--small", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_throughput_small_prints_both_rates_and_their_ratio(data, tmp_path):
    # basenet and 360 images: both paths take a second or two on 2 cores
    out = tmp_path / "throughput.json"
    done = run("throughput.py", "--net", "basenet", "--data", str(data), "--fraction", "1",
               "--device", "cpu", "--json", str(out), tmp_path=tmp_path)
    assert "ratio:" in done.stdout and "engine:" in done.stdout, done.stdout
    figures = json.loads(out.read_text())
    assert figures["engine_img_per_s"] > 0 and figures["dataloader_img_per_s"] > 0
    assert figures["dataloader_steady_img_per_s"] > 0 and figures["ratio"] > 0
    assert figures["net"] == "basenet" and figures["params"] == 23432


def test_packing_small_runs_k_1_and_2(data, tmp_path):
    # the VGG-style net is slow on a CPU: 36 images in batches of 16, so 2 steps per trial
    out = tmp_path / "packing.json"
    done = run("packing.py", "--data", str(data), "--fraction", "0.1", "--batch-size", "16",
               "--device", "cpu", "--json", str(out), tmp_path=tmp_path)
    assert "k=1:" in done.stdout and "k=2:" in done.stdout and "ratio" in done.stdout, done.stdout
    figures = json.loads(out.read_text())
    assert [r["k"] for r in figures["runs"]] == [1, 2]
    for r in figures["runs"]:
        assert r["aggregate_img_per_s"] > 0 and r["images"] == r["k"] * 32
        assert r["ratio_to_k1"] > 0 and r["peak_mib"] == [None] * r["k"]


def test_checkpoint_small_times_each_starting_points_checkpoint(data, tmp_path):
    out = tmp_path / "checkpoint.json"
    run("checkpoint.py", "--space", str(REPO / "tests/spaces/tiny.py"), "--data", str(data),
        "--fraction", "1", "--json", str(out), tmp_path=tmp_path)
    figures = json.loads(out.read_text())["nets"]
    assert list(figures) == ["too-slow"]
    net = figures["too-slow"]
    assert net["checkpoint_s"] > 0 and net["epoch_s"] > 0 and net["checkpoint_bytes"] > 0
    assert 0 < net["share_every_epoch"] < 1


def test_search_quality_tiny_runs_every_method_on_two_seeds(tmp_path):
    # that it runs and writes what it promises, not its numbers: 2 seeds of the 4 methods and
    # one hpo variant, on the tiny space and 300 generated images, 4 epochs per search
    data = write_parquet_dataset(tmp_path / "data", n_train=300, n_test=60)
    out, png = tmp_path / "sq.json", tmp_path / "sq.png"
    env = {**os.environ, "HPO_CACHE": str(tmp_path / "cache")}
    methods = "hpo,ray-optuna,ray-random,optuna-hyperband,hpo:random"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "search_quality.py"), "--space",
         str(REPO / "tests/spaces/tiny.py"), "--data", str(data), "--fraction", "1",
         "--max-epochs", "2", "--grace-period", "1", "--epoch-budget", "4", "--time-cap", "2",
         "--seeds", "2", "--methods", methods, "--cpus", "2", "--work", str(tmp_path / "work"),
         "--json", str(out), "--png", str(png)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(out.read_text())
    assert list(figures["methods"]) == methods.split(",")
    for method, f in figures["methods"].items():
        assert [r["seed"] for r in f["runs"]] == [0, 1], method
        for r in f["runs"]:
            # the budget ends each search: no more epochs than it allows, plus those already
            # running when it ran out (at most one per CPU)
            assert 1 <= r["epochs_spent"] <= 4 + 2, (method, r)
            assert r["trials"] >= 1 and 0 <= r["best_val"] <= 1, (method, r)
            assert r["test_acc"] is not None and 0 <= r["test_acc"] <= 1, (method, r)
            assert set(r["wasted"]) == {"infeasible", "duplicate", "diverged", "oom"}
            assert [best for _, best in r["curve"]] == sorted(best for _, best in r["curve"])
        assert len(f["anytime"]["mean"]) == 4
    assert png.stat().st_size > 0
    assert "best val (full budget)" in done.stdout
    # bench/dimensions.py reads the same searches back: hpo's 4 studies and Ray's 4 experiments
    dims = subprocess.run([sys.executable, str(REPO / "bench" / "dimensions.py"),
                           str(tmp_path / "work")], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert dims.returncode == 0, dims.stdout + dims.stderr
    assert " in 8 searches" in dims.stdout and "  optimizer " in dims.stdout, dims.stdout


def test_predict_small_times_the_engine_and_the_torch_loop(tmp_path):
    out = tmp_path / "predict.json"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "predict.py"), "--small",
                           "--cases", "basenet-32px", "--json", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    case = json.loads(out.read_text())["cases"]["basenet-32px"]
    assert case["files"] == 16 and case["params"] == 23432
    assert len(case["engine_img_per_s"]) == len(case["torch_img_per_s"]) == 1
    assert case["max_prob_diff"] < 1e-4  # the same computation on the same pixels


def test_ensemble_small_tests_both_kinds_and_the_single_best(tiny_parquet, tmp_path):
    from hpo.config import complete

    base = dict(stages=1, convs_1=1, width=8, epochs=2, batch_size=64, optimizer="adam")
    study = write_board(tmp_path / "results/ens", TINY, tiny_parquet, [
        (complete({**base, "lr": 0.01}), [0.4, 0.6]),
        (complete({**base, "lr": 0.003}), [0.5, 0.7]),  # the best
        (complete({**base, "lr": 0.03}), [0.3, 0.5])])
    out = tmp_path / "ensemble.json"
    done = run("ensemble.py", str(study), "--json", str(out), tmp_path=tmp_path)
    assert "mean test accuracy: configs" in done.stdout, done.stdout
    figures = json.loads(out.read_text())
    configs, seeds = figures["configs"][0], figures["seeds"][0]
    assert [(m["trial_id"], m["seed"]) for m in configs["members"]] == [(1, 0), (0, 0)]
    assert [(m["trial_id"], m["seed"]) for m in seeds["members"]] == [(1, 0), (1, 1)]
    # the single best is the best config with seed 0: the first member of both here
    assert figures["single"] == [{"seed": 0, "test_acc": seeds["members"][0]["test_acc"]}]
    assert configs["members"][0]["test_acc"] == seeds["members"][0]["test_acc"]
    assert all(0 <= w["ensemble_acc"] <= 1 for w in (configs, seeds))
    assert not (study / "final").exists()  # nothing written into the study


def test_leaderboard_times_the_command_and_names_what_it_imports(data, tmp_path):
    plan, record = begun(tmp_path / "results", data)
    add_trial(record, {"lr": 0.1}, [0.5, 0.6])
    add_trial(record, {"lr": 0.01}, [0.7])
    views.rebuild(plan.folder, record)
    out = tmp_path / "leaderboard.json"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "leaderboard.py"),
                           str(plan.folder.path), "--repeats", "2", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["command"].split()[-1] for r in rows] == [str(plan.folder.path), "--csv"]
    for r in rows:
        assert 0 < r["min_s"] <= r["median_s"] <= r["max_s"] and r["imports"] == []
