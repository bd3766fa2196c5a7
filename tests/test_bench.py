"""bench/throughput.py, bench/packing.py, bench/checkpoint.py, bench/ensemble.py,
bench/search_quality.py and the others here run end to end in their small CPU forms.

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


def search_quality(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HPO_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, str(REPO / "bench" / "search_quality.py"), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_search_quality_tiny_runs_every_kind_of_method_on_two_seeds(tmp_path):
    # that it runs and writes what it promises, not its numbers: 2 seeds of hpo, two of its
    # ablations, its sampler on stock Ray Tune and two stock baselines, on the tiny space and
    # 300 generated images, 4 epochs per search
    data = write_parquet_dataset(tmp_path / "data", n_train=300, n_test=60)
    out, png, work = tmp_path / "sq.json", tmp_path / "sq.png", tmp_path / "work"
    methods = ("hpo,hpo:nopoints,hpo:random,ray-optuna:tpe-multivariate:3,ray-random,"
               "optuna-hyperband")
    done = search_quality(
        "--space", str(REPO / "tests/spaces/tiny.py"), "--data", str(data), "--fraction", "1",
        "--max-epochs", "2", "--grace-period", "1", "--epoch-budget", "4", "--time-cap", "2",
        "--seeds", "2", "--methods", methods, "--cpus", "2", "--work", str(work),
        "--json", str(out), "--png", str(png), tmp_path=tmp_path)
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
    # hpo:nopoints searched a copy of the space without its starting point
    assert "starting_points = {}" in (work / "spaces" / "tiny-nopoints.py").read_text()
    assert figures["methods"]["hpo"]["runs"][0]["chosen_trial"] is not None
    # every pair but stock against stock (ray-random, optuna-hyperband), paired by seed
    pairs = [(c["a"], c["b"]) for c in figures["comparisons"]]
    names = methods.split(",")
    assert len(pairs) == 6 * 5 // 2 - 1 and ("ray-random", "optuna-hyperband") not in pairs
    assert pairs[0] == ("hpo", "hpo:nopoints") and all(
        names.index(a) < names.index(b) for a, b in pairs)
    for c in figures["comparisons"]:
        for key in ("best_val", "test_acc"):
            x = c[key]
            runs = {m: {r["seed"]: r[key] for r in figures["methods"][m]["runs"]}
                    for m in (c["a"], c["b"])}
            assert x["seeds"] == [0, 1] and x["diffs"] == pytest.approx(
                [runs[c["a"]][s] - runs[c["b"]][s] for s in (0, 1)]), c
            lo, hi = x["t_ci"]
            assert lo <= x["mean"] <= hi and x["wins"] + x["ties"] + x["losses"] == 2
            assert 0 < x["sign_p"] <= 1 and x["sign_p_min"] >= 0.5  # 2 seeds prove nothing
        assert c["anytime_mean"]["n"] == 2
    assert png.stat().st_size > 0
    assert "best val (full budget)" in done.stdout and "paired by seed" in done.stdout
    # the rows for BENCHMARKS.md, from the JSON alone
    rows = search_quality("--rows", str(out), tmp_path=tmp_path).stdout
    # a row per method, and per compared quantity (best val, test, anytime mean) one per pair
    assert rows.count("\n| `") == 6 + 3 * len(pairs), rows
    assert "| `hpo` − `hpo:nopoints` | " in rows and "- `optuna-hyperband`: " in rows
    # --done runs no search: a third seed and a method never run are reported as missing, the
    # rest over the seeds they have, paired over the seeds both have
    before = sorted(p.name for p in (work / "runs").iterdir())
    so_far = tmp_path / "so-far.json"
    done = search_quality(
        "--space", str(REPO / "tests/spaces/tiny.py"), "--data", str(data), "--fraction", "1",
        "--max-epochs", "2", "--grace-period", "1", "--epoch-budget", "4", "--seeds", "3",
        "--methods", "hpo,hpo:gp,ray-random", "--work", str(work), "--done",
        "--json", str(so_far), tmp_path=tmp_path)
    assert sorted(p.name for p in (work / "runs").iterdir()) == before
    assert "no search in" in done.stdout and "hpo:gp" in done.stdout
    partial = json.loads(so_far.read_text())
    assert partial["settings"]["seeds_done"] == {"hpo": [0, 1], "ray-random": [0, 1]}
    assert [(c["a"], c["b"]) for c in partial["comparisons"]] == [("hpo", "ray-random")]
    assert partial["comparisons"][0]["best_val"]["seeds"] == [0, 1]
    assert partial["methods"]["hpo"]["runs"] == figures["methods"]["hpo"]["runs"]
    rows = search_quality("--rows", str(so_far), tmp_path=tmp_path).stdout
    assert "searches done so far of 3 seeds: `hpo` 2 (seeds 0, 1)" in rows, rows
    # bench/dimensions.py reads the same searches back: hpo's 6 studies and Ray's 4 experiments
    env = {**os.environ, "HPO_CACHE": str(tmp_path / "cache")}
    dims = subprocess.run([sys.executable, str(REPO / "bench" / "dimensions.py"), str(work)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert dims.returncode == 0, dims.stdout + dims.stderr
    assert " in 10 searches" in dims.stdout and "  optimizer " in dims.stdout, dims.stdout
    # bench/selection.py reruns each hpo study's top 2 completed configs with one more seed
    sel = tmp_path / "selection.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "selection.py"), "--dataset", "cifar10",
         "--space", str(REPO / "tests/spaces/tiny.py"), "--data", str(data), "--fraction", "1",
         "--max-epochs", "2", "--grace-period", "1", "--work", str(work), "--k", "2",
         "--seeds", "1", "--test-seeds", "1", "--json", str(sel)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    found = json.loads(sel.read_text())
    assert found["of"] == len(found["studies"]) >= 1 and "studies" in done.stdout
    for s in found["studies"]:
        assert s["study"].startswith("hpo-seed") and 1 <= len(s["runs"]) <= 2
        assert all(len(v) == 2 and all(0 <= x <= 1 for x in v) for v in s["runs"].values())
        means = {int(n): sum(v) / 2 for n, v in s["runs"].items()}
        assert means[s["chosen"]] == max(means.values()) == pytest.approx(s["chosen_mean"])
        assert s["differs"] == (s["chosen"] != s["single"])
        if s["differs"]:
            assert s["gain"] == pytest.approx(s["chosen_test"] - s["single_test"])
        else:
            assert s["gain"] == 0


def test_search_quality_noreject_runs_the_draws_hpo_rejects(tmp_path):
    # at 2x2 pixels the tiny space's 2-stage nets cannot be built: hpo rejects those draws
    # before they become trials; hpo:noreject runs them, and they end "infeasible" at epoch 0
    data = write_parquet_dataset(tmp_path / "data", n_train=200, n_test=40)
    space = tmp_path / "tiny2.py"
    space.write_text((REPO / "tests/spaces/tiny.py").read_text() + "\nimage_size = 2\n")
    out = tmp_path / "sq.json"
    search_quality("--space", str(space), "--data", str(data), "--fraction", "1",
                   "--max-epochs", "2", "--grace-period", "1", "--epoch-budget", "4",
                   "--time-cap", "2", "--seeds", "1", "--methods", "hpo,hpo:noreject",
                   "--cpus", "2", "--work", str(tmp_path / "work"), "--json", str(out),
                   tmp_path=tmp_path)
    methods = json.loads(out.read_text())["methods"]
    hpo, noreject = methods["hpo"]["runs"][0], methods["hpo:noreject"]["runs"][0]
    assert hpo["rejected"] > 0 and hpo["wasted"]["infeasible"] == 0, hpo
    assert noreject["rejected"] == 0 and noreject["wasted"]["infeasible"] > 0, noreject


def test_search_quality_digits_writes_a_class_folder_and_the_imagefolder_space(tmp_path):
    # scikit-learn's digits as a user's folder of class folders, searched with
    # spaces/imagefolder.py as shipped but for image_size and channels; a tiny budget
    work, out = tmp_path / "work", tmp_path / "sq.json"
    done = search_quality("--dataset", "digits", "--fraction", "0.2", "--max-epochs", "1",
                          "--grace-period", "1", "--epoch-budget", "2", "--time-cap", "10",
                          "--seeds", "1", "--methods", "hpo,optuna-hyperband", "--cpus", "2",
                          "--work", str(work), "--json", str(out), tmp_path=tmp_path)
    folder = work / "data" / "digits"
    assert sorted(int(d.name) for d in (folder / "train").iterdir()) == list(range(10))
    assert sum(1 for _ in (folder / "test").rglob("*.png")) == 360  # a fifth of 1,797
    assert sum(1 for _ in (folder / "train").rglob("*.png")) == 1797 - 360
    space = (work / "spaces" / "imagefolder-digits.py").read_text().splitlines()
    shipped = (REPO / "spaces" / "imagefolder.py").read_text().splitlines()
    changed = [b for a, b in zip(shipped, space) if a != b]
    assert len(space) == len(shipped) and [c.split(" = ")[0] for c in changed] == [
        "image_size", "channels"], changed
    figures = json.loads(out.read_text())
    s = figures["settings"]
    assert s["dataset"] == "digits" and s["test_images"] == 360
    assert s["starting_points"] == ["resnet-sgd", "plain-adamw", "small-adamw"]
    for f in figures["methods"].values():
        assert f["runs"][0]["test_acc"] is not None
    assert [(c["a"], c["b"]) for c in figures["comparisons"]] == [("hpo", "optuna-hyperband")]
    assert done.stdout.startswith("imagefolder-digits on digits: "), done.stdout


def test_paired_statistics_against_known_values():
    sys.path.insert(0, str(REPO / "bench"))
    from paired import paired, sign_test, t_quantile

    # Student t quantiles as tables give them
    for df, t in ((1, 12.7062), (4, 2.7764), (5, 2.5706), (30, 2.0423)):
        assert t_quantile(0.975, df) == pytest.approx(t, abs=1e-4)
    assert sign_test([1, 2, 3, 4, 5]) == {"wins": 5, "ties": 0, "losses": 0,
                                          "sign_p": 0.0625, "sign_p_min": 0.0625}
    assert sign_test([1, 0, -1, 2, 3, 4])["sign_p"] == pytest.approx(2 * 6 / 32)
    x = paired({0: 0.5, 1: 0.6, 2: 0.55, 3: None}, {0: 0.4, 1: 0.6, 2: 0.5, 3: 0.3, 4: 0.1})
    assert x["seeds"] == [0, 1, 2] and x["diffs"] == pytest.approx([0.1, 0.0, 0.05])
    assert x["mean"] == pytest.approx(0.05)
    lo, hi = x["t_ci"]  # 0.05 ± 4.3027 * 0.05 / sqrt(3)
    assert (lo, hi) == pytest.approx((0.05 - 0.124208, 0.05 + 0.124208), abs=1e-5)
    blo, bhi = x["bootstrap_ci"]
    assert 0.0 <= blo <= x["mean"] <= bhi <= 0.1


def test_search_quality_warm_starts_from_a_study_on_a_quarter_of_the_data(tmp_path):
    # hpo:warm runs hpo on a quarter of the data first, then the measured search with
    # --warm-start from it: the earlier study's trials reach the new one's sampler, and its
    # cost is reported apart from the new search's curve. Half the budget (6 epochs) lets the
    # earlier study finish trials (those the budget cuts short are not carried). The epoch
    # budget ends each study; the 10-minute cap only keeps a loaded machine from ending one
    # before its first epoch
    data = write_parquet_dataset(tmp_path / "data", n_train=300, n_test=60)
    work = tmp_path / "work"
    search_quality(
        "--space", str(REPO / "tests/spaces/tiny.py"), "--data", str(data), "--fraction", "1",
        "--max-epochs", "2", "--grace-period", "1", "--epoch-budget", "12", "--time-cap", "10",
        "--seeds", "1", "--methods", "hpo:warm", "--cpus", "2", "--work", str(work),
        tmp_path=tmp_path)
    run = json.loads((work / "runs" / "hpo-warm-seed0.json").read_text())
    source = run["source"]
    assert source["fraction"] == 0.25 and 1 <= source["epochs"] <= 6 + 2, source
    assert 1 <= run["epochs_spent"] <= 12 + 2 and run["curve"][0][0] == 1, run
    meta = json.loads((work / "hpo" / "hpo-warm-seed0" / "study.json").read_text())
    warm = meta["warm_start"]
    assert warm["study"].endswith("hpo-warm-seed0-source") and warm["trials"] >= 1, meta


def test_search_quality_method_names():
    sys.path.insert(0, str(REPO / "bench"))
    from search_quality import parse_method

    m = parse_method("hpo:tpe-multivariate:3:nopoints:noreject")
    assert (m.base, m.sampler, m.startup, m.points, m.reject) == (
        "hpo", "tpe-multivariate", 3, False, False)
    assert parse_method("ray-optuna:tpe:5").sampler == "tpe" and parse_method("ray-optuna").stock
    assert not parse_method("hpo:noreject").stock
    assert parse_method("hpo:nopoints:warm").warm and not parse_method("hpo").warm
    for bad in ("hpo:3", "ray-random:tpe", "ray-optuna:nopoints", "hpo:nopoints:nopoints",
                "ray-optuna:warm", "hpo:warm:warm",
                "grid"):
        with pytest.raises(ValueError, match="unknown method"):
            parse_method(bad)


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
