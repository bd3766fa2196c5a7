"""A real `hpo search` through Ray (2 CPUs), Optuna and PyTorch on a small generated dataset."""

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import stored_study
from hpo.data import load_dataset
from hpo.train import run_trial

ROOT = Path(__file__).parents[1]
TINY = ROOT / "tests/spaces/tiny.py"

pytestmark = pytest.mark.slow


def hpo(*args, cwd):
    return subprocess.run([sys.executable, "-m", "hpo.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def study(tiny_parquet, tmp_path_factory):
    """One search for the whole module, with a reader polling its leaderboard meanwhile."""
    cwd = tmp_path_factory.mktemp("run")
    board = cwd / "results/tiny/leaderboard.csv"
    reads, done = [], threading.Event()

    def read_while_running():
        while not done.is_set():
            if board.exists():
                reads.append(len(pd.read_csv(board)))  # must never see half a file
            time.sleep(0.05)

    reader = threading.Thread(target=read_while_running)
    reader.start()
    try:
        proc = hpo("search", TINY, "--data", tiny_parquet, "--num-cpus", 2, "--trials", 8,
                   "--max-epochs", 3, "--name", "tiny", cwd=cwd)
    finally:
        done.set()
        reader.join()
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd, cwd / "results/tiny", proc, reads


def test_search_writes_a_well_formed_leaderboard(study):
    cwd, folder, proc, reads = study
    df = pd.read_csv(folder / "leaderboard.csv")
    assert len(df) == 8 and df["trial_id"].is_unique
    assert list(df["rank"]) == list(range(1, 9))
    assert set(df["status"]) <= {"completed", "stopped", "infeasible", "diverged", "oom"}
    # ASHA cut at least one trial short, and at least one ran its full epochs
    assert (df["status"] == "stopped").sum() >= 1 and (df["status"] == "completed").sum() >= 1
    assert (df.loc[df.status == "stopped", "epochs_trained"] < 3).all()
    assert df["val_acc"].is_monotonic_decreasing
    assert (df["params"] > 0).all() and (df["img_per_s"] > 0).all()
    # the starting point ran under its name
    assert "too-slow" in set(df["point"])
    # the reader polled the leaderboard during the search and always parsed it
    assert len(reads) > 5


def test_study_folder_holds_the_promised_files(study):
    _, folder, proc, _ = study
    for name in ("leaderboard.csv", "best.json", "best.pt", "space.py", "study.json", "ray.log",
                 "study.db"):
        assert (folder / name).is_file(), name
    assert (folder / "space.py").read_text() == TINY.read_text()
    # Ray's own chatter goes to the log file, not the terminal
    assert "Started a local Ray instance" in (folder / "ray.log").read_text()
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr


def test_search_writes_one_plain_line_per_trial_event_when_not_a_terminal(study):
    _, folder, proc, _ = study
    df = pd.read_csv(folder / "leaderboard.csv", dtype={"trial_id": str})
    assert "\x1b" not in proc.stdout and "\r" not in proc.stdout  # a log, not a redrawn view
    for trial_id, status in zip(df.trial_id, df.status):
        assert re.search(rf"^trial {trial_id}( \(too-slow\))? started: 3 epochs$", proc.stdout,
                         re.M)
        assert re.search(rf"^trial {trial_id}( \(too-slow\))? {status} after ", proc.stdout,
                         re.M)
    assert re.search(r"^trial \w+( \(too-slow\))? epoch 1/3: val_acc \d\.\d{4}, best ",
                     proc.stdout, re.M)
    assert re.search(r"^hpo tiny  8/8 finished · 0 running .* time left ≈ 0s \(estimate",
                     proc.stdout, re.M)


def test_search_says_where_its_time_went(study):
    _, folder, proc, _ = study
    spent = json.loads((folder / "study.json").read_text())["time"]
    assert spent["train_s"] > 0 and spent["eval_s"] > 0 and spent["ray_start_s"] > 0
    assert 0 <= spent["idle_s"] <= spent["search_s"]
    assert spent["trial_other_s"] >= 0
    # the trials' own epochs account for part of their lives seen from the driver, not more
    epochs = pd.read_csv(folder / "epochs.csv")
    assert spent["train_s"] + spent["eval_s"] == pytest.approx(
        (epochs.t_end - epochs.t_start).sum(), rel=0.01)
    assert "time: data" in proc.stdout and "trial-seconds" in proc.stdout


def test_exported_best_config_reproduces_a_trial(study, tiny_parquet):
    cwd, folder, _, _ = study
    out = hpo("export", folder, "--rank", "1", "-o", "best.json", cwd=cwd)
    assert out.returncode == 0, out.stderr
    config = json.loads((cwd / "best.json").read_text())
    assert config == json.loads((folder / "best.json").read_text())
    config["epochs"] = 1
    final = run_trial(config, load_dataset(tiny_parquet), lambda *a, **k: None)
    assert final["status"] == "completed"


def test_optuna_study_marks_stopped_trials_pruned(study):
    _, folder, _, _ = study
    df = pd.read_csv(folder / "leaderboard.csv")
    stored = stored_study(folder)
    states = [t.state.name for t in stored.trials]
    assert states.count("PRUNED") == (df["status"] == "stopped").sum()
    assert states.count("COMPLETE") == (df["status"] == "completed").sum()
    # every epoch a trial trained is an intermediate value TPE can use
    trained = sorted(df["epochs_trained"])
    assert sorted(len(t.intermediate_values) for t in stored.trials) == trained


def test_leaderboard_command_prints_the_top_rows(study):
    cwd, folder, _, _ = study
    out = hpo("leaderboard", folder, "--top", "3", cwd=cwd)
    assert out.returncode == 0 and "val_acc" in out.stdout and "completed" in out.stdout


def test_final_retrain_tests_the_best_config_and_a_starting_point(study):
    cwd, folder, _, _ = study
    for extra in ([], ["--point", "too-slow"]):
        out = hpo("train", folder, "--seeds", "2", *extra, cwd=cwd)
        assert out.returncode == 0, out.stderr[-2000:]
    results = json.loads((folder / "final/results.json").read_text())
    assert results["seeds"] == [0, 1] and len(results["test_acc"]) == 2
    assert 0 <= results["mean"] <= 1 and results["runs"][0]["status"] == "completed"
    point = results["starting_points"]["too-slow"]
    # a starting point retrains under the study's budget (--max-epochs 3), as the best does
    assert point["config"]["epochs"] == results["config"]["epochs"] == 3
    assert (folder / "final/best-seed1.pt").is_file()
    # the same data the study searched, trained on train + validation
    assert results["data_fingerprint"] == json.loads((folder / "study.json").read_text())[
        "fingerprint"]
    assert results["train_fingerprint"] != results["data_fingerprint"]


def test_report_command_writes_the_html_report(study):
    cwd, folder, _, _ = study
    out = hpo("report", folder, cwd=cwd)
    assert out.returncode == 0, out.stderr[-2000:]
    html = (folder / "report.html").read_text()
    assert html.count("<img") >= 4 and "Learning curves" in html


def test_best_weights_load_safely_into_the_best_config(study, tiny_parquet):
    import torch

    from hpo.model import build_model

    _, folder, _, _ = study
    config = json.loads((folder / "best.json").read_text())
    data = load_dataset(tiny_parquet)
    model = build_model(config, data.image_shape, data.num_classes)
    # weights_only: a checkpoint is data, never code to run
    model.load_state_dict(torch.load(folder / "best.pt", weights_only=True))


def test_two_objectives_mark_the_pareto_front(tiny_parquet, tmp_path):
    space = ROOT / "tests/spaces/two_objectives.py"
    out = hpo("search", space, "--data", tiny_parquet, "--num-cpus", 2, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    folder = tmp_path / "results/two_objectives"
    df = pd.read_csv(folder / "leaderboard.csv")
    front = df[df.pareto]
    assert len(df) == 8 and len(front) >= 1
    # nothing off the front beats a front trial on both accuracy and size
    for _, row in df[~df.pareto & df.val_acc.notna()].iterrows():
        assert ((front.val_acc >= row.val_acc) & (front.params <= row.params)).any()
    stored = stored_study(folder)
    assert [d.name for d in stored.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert stored.best_trials
    assert [t.state.name for t in stored.trials].count("PRUNED") == (df.status == "stopped").sum()


def test_trial_resources_follow_the_cluster():
    from io import StringIO

    from rich.console import Console

    from hpo.tuning import SearchOptions
    from hpo.tuning.placement import trial_resources

    quiet = Console(file=StringIO())
    # CPUs only: one CPU per trial, as many as there are CPUs
    assert trial_resources(SearchOptions(), {"CPU": 8}, quiet) == ({"cpu": 1.0}, 8)
    # GPUs: a quarter GPU each by default, four trials per GPU
    assert trial_resources(SearchOptions(), {"CPU": 16, "GPU": 2}, quiet) == (
        {"cpu": 1.0, "gpu": 0.25}, 8)
    # an autoscaling cluster with no GPU node up yet still gets GPU requests when asked
    resources, _ = trial_resources(SearchOptions(gpus_per_trial=0.5), {"CPU": 0}, quiet)
    assert resources == {"cpu": 1.0, "gpu": 0.5}
