"""A search end to end: the session's real `hpo search` (Ray on 2 CPUs, Optuna, PyTorch on a
small generated dataset) read after the fact, and runs of the driver in this process with a
fast trainable injected, for what a run does with the record it continues."""

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT, TINY, hpo_command, search, stored_study
from hpo.data import load_dataset
from hpo.record import Record
from hpo.train import run_trial


def test_search_writes_a_well_formed_leaderboard(finished_study):
    df = pd.read_csv(finished_study.folder / "leaderboard.csv")
    assert len(df) == 6 and df["trial_id"].is_unique
    assert list(df["rank"]) == list(range(1, 7))
    assert set(df["status"]) <= {"completed", "stopped", "infeasible", "diverged", "oom"}
    # ASHA cut at least one trial short, and at least one ran its full epochs
    assert (df["status"] == "stopped").sum() >= 1 and (df["status"] == "completed").sum() >= 1
    assert (df.loc[df.status == "stopped", "epochs_trained"] < 4).all()
    assert df["val_acc"].is_monotonic_decreasing
    assert (df["params"] > 0).all() and (df["img_per_s"] > 0).all()
    assert "too-slow" in set(df["point"])  # the starting point ran under its name
    # a reader polled the leaderboard during the search and always parsed it
    assert len(finished_study.reads) > 5


def test_study_folder_holds_the_promised_files(finished_study):
    folder, run = finished_study.folder, finished_study.run
    for name in ("leaderboard.csv", "epochs.csv", "configs.json", "best.json", "best.pt",
                 "space.py", "study.json", "ray.log", "study.db"):
        assert (folder / name).is_file(), name
    assert (folder / "space.py").read_text() == TINY.read_text()
    # Ray's own chatter goes to the log file, not the terminal
    assert "Started a local Ray instance" in (folder / "ray.log").read_text()
    assert "Started a local Ray instance" not in run.stdout + run.stderr
    # no temporary outlives the run that made it
    assert not list(folder.glob(".*.tmp"))


def test_the_record_and_its_views_agree_row_for_row(finished_study):
    folder = finished_study.folder
    record = Record.load(f"sqlite:///{folder / 'study.db'}", "tiny")
    board = pd.read_csv(folder / "leaderboard.csv").set_index("trial_id")
    assert sorted(board.index) == [t.number for t in record.real()]
    epochs = pd.read_csv(folder / "epochs.csv")
    for t in record.real():
        assert board.loc[t.number, "status"] == t.status
        mine = epochs[epochs.trial_id == t.number]
        assert list(mine.epoch) == [e["epoch"] for e in t.epochs]
        assert list(mine.val_acc) == pytest.approx([e["val_acc"] for e in t.epochs])
    stored = stored_study(folder)
    states = [t.state.name for t in stored.trials]
    assert states.count("PRUNED") == (board["status"] == "stopped").sum()
    assert states.count("COMPLETE") == (board["status"] == "completed").sum()
    # every epoch a trial trained is an intermediate value TPE can use
    assert sorted(len(t.intermediate_values) for t in stored.trials) == sorted(
        board["epochs_trained"])


def test_search_writes_one_plain_line_per_trial_event_when_not_a_terminal(finished_study):
    out = finished_study.run.stdout
    df = pd.read_csv(finished_study.folder / "leaderboard.csv", dtype={"trial_id": str})
    assert "\x1b" not in out and "\r" not in out  # a log, not a redrawn view
    for trial_id, status in zip(df.trial_id, df.status):
        assert re.search(rf"^trial {trial_id}( \(too-slow\))? started: 4 epochs$", out, re.M)
        assert re.search(rf"^trial {trial_id}( \(too-slow\))? {status} after ", out, re.M)
    assert re.search(r"^trial \w+( \(too-slow\))? epoch 1/4: val_acc \d\.\d{4}, best ", out,
                     re.M)
    assert re.search(r"^hpo tiny  6/6 finished · 0 running .* time left ≈ 0s \(estimate", out,
                     re.M)


def test_search_says_where_its_time_went(finished_study):
    spent = json.loads((finished_study.folder / "study.json").read_text())["time"]
    assert spent["train_s"] > 0 and spent["eval_s"] > 0 and spent["ray_start_s"] > 0
    assert 0 <= spent["idle_s"] <= spent["search_s"] and spent["trial_other_s"] >= 0
    # the trials' own epochs account for part of their lives seen from the driver, not more
    epochs = pd.read_csv(finished_study.folder / "epochs.csv")
    assert spent["train_s"] + spent["eval_s"] == pytest.approx(
        (epochs.t_end - epochs.t_start).sum(), rel=0.01)
    assert "time: data" in finished_study.run.stdout


def test_the_best_config_and_weights_reproduce_a_trial(finished_study, tiny_parquet, tmp_path):
    import torch

    from hpo.model import build_model

    out = hpo_command("export", finished_study.folder, "-o", tmp_path / "best.json",
                      cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    config = json.loads((tmp_path / "best.json").read_text())
    assert config == json.loads((finished_study.folder / "best.json").read_text())
    data = load_dataset(tiny_parquet)
    model = build_model(config, data.image_shape, data.num_classes)
    # weights_only: a checkpoint is data, never code to run
    model.load_state_dict(torch.load(finished_study.folder / "best.pt", weights_only=True))
    # the best of the selection's two configs, by its mean over seeds 0 and 1; best.pt holds
    # the weights of one of its runs
    best = json.loads((finished_study.folder / "study.json").read_text())["best"]
    assert best["runs"] == 2 and best["seeds"] == [0, 1]
    assert best["weights"]["trial_id"] == best["trial_id"] and best["weights"]["seed"] in (0, 1)
    board = pd.read_csv(finished_study.folder / "leaderboard.csv")
    assert board.trial_id[0] == best["trial_id"] and board.runs.notna().sum() == 2
    final = run_trial({**config, "epochs": 1}, data, lambda *a, **k: None)
    assert final["status"] == "completed"


def test_a_run_continues_the_record_and_rebuilds_what_was_lost(tmp_path, tiny_parquet):
    results = tmp_path / "results"
    folder = search(TINY, results, tiny_parquet, trials=4)
    record = Record.load(f"sqlite:///{folder / 'study.db'}", "tiny")
    first = {t.number: t.epochs for t in record.real()}
    assert len(first) == 4 and all(t.status.ended for t in record.real())
    # the views lost between runs, the study extended: only the new trials train, and every
    # view comes back from the record
    for view in ("leaderboard.csv", "epochs.csv", "configs.json", "study.json"):
        (folder / view).unlink()
    search(TINY, results, tiny_parquet, trials=6)
    record = Record.load(f"sqlite:///{folder / 'study.db'}", "tiny")
    assert len(record.real()) == 6
    assert {n: t.epochs for n, t in record.trials.items() if n in first} == first
    board = pd.read_csv(folder / "leaderboard.csv")
    assert len(board) == 6 and len(pd.read_csv(folder / "epochs.csv")) == sum(
        t.epochs_trained for t in record.real())
    meta = json.loads((folder / "study.json").read_text())
    assert meta["trials"] == 6 and len(meta["runs"]) == 2
    # run again without --trials: it keeps the study's 6, and says it is complete
    search(TINY, results, tiny_parquet)
    assert len(json.loads((folder / "study.json").read_text())["runs"]) == 2


def test_two_objectives_mark_the_pareto_front(tiny_parquet, tmp_path):
    def sized(config, **kwargs):  # smaller nets score lower: a real trade-off
        from ray import tune

        for epoch in (1, 2):
            tune.report({"epoch": epoch, "epochs": 2, "val_acc": config["width"] / 16 * epoch / 2
                         + config["lr"], "params": config["width"] * 100,
                         "status": "completed" if epoch == 2 else "running"})

    folder = search(ROOT / "tests/spaces/two_objectives.py", tmp_path / "results",
                    tiny_parquet, trainable=sized, max_epochs=2)
    df = pd.read_csv(folder / "leaderboard.csv")
    front = df[df.pareto]
    assert len(df) == 8 and len(front) >= 1
    # nothing off the front beats a front trial on both accuracy and size
    for _, row in df[~df.pareto & df.val_acc.notna()].iterrows():
        assert ((front.val_acc >= row.val_acc) & (front.params <= row.params)).any()
    stored = stored_study(folder)
    assert [d.name for d in stored.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert stored.best_trials


def test_trial_resources_follow_the_cluster():
    from io import StringIO

    from rich.console import Console

    from hpo.options import SearchOptions
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


@pytest.mark.e2e
def test_the_final_retrain_tests_the_best_config_and_a_starting_point(finished_study, tmp_path):
    out_dir = tmp_path / "final"  # not the study's own final/: the study stays as it ran
    for extra in ([], ["--point", "too-slow"]):
        out = hpo_command("train", finished_study.folder, "--seeds", 2, "--out", out_dir,
                          *extra, cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-2000:]
    results = json.loads((out_dir / "results.json").read_text())
    assert results["seeds"] == [0, 1] and len(results["test_acc"]) == 2
    assert 0 <= results["mean"] <= 1 and results["runs"][0]["status"] == "completed"
    point = results["starting_points"]["too-slow"]
    # a starting point retrains under the study's budget, as the best does
    assert point["config"]["epochs"] == results["config"]["epochs"] == 4
    assert (out_dir / "best-seed1.pt").is_file()
    # the same data the study searched, trained on train + validation
    assert results["data_fingerprint"] == json.loads(
        (finished_study.folder / "study.json").read_text())["fingerprint"]
    assert results["train_fingerprint"] != results["data_fingerprint"]
    assert not (finished_study.folder / "final").exists()


def test_a_study_runs_from_a_folder_and_is_read_from_another(tmp_path, tiny_parquet,
                                                             finished_study):
    # the study recorded its data's absolute path: hpo train works from anywhere
    meta = json.loads((finished_study.folder / "study.json").read_text())
    assert Path(meta["data"]).is_absolute() and Path(meta["space"]).is_absolute()


@pytest.mark.e2e
def test_a_warm_started_study_draws_from_what_the_earlier_one_learnt(tmp_path, tiny_parquet):
    old = search(TINY, tmp_path / "results", tiny_parquet, trials=10, name="old")
    new = search(TINY, tmp_path / "results", tiny_parquet, trials=3, name="new",
                 warm_start=str(old))
    record = Record.load(f"sqlite:///{new / 'study.db'}", "new")
    warm = [t for t in record.trials.values() if t.kind == "warm"]
    assert len(warm) == 10 and len(record.real()) == 3
    assert len(pd.read_csv(new / "leaderboard.csv")) == 3
    meta = json.loads((new / "study.json").read_text())
    assert meta["warm_start"] == {"study": str(old), "trials": 10}
    # TPE's start-up is spent on the earlier trials: the new draws are its model's, near
    # the earlier study's best lr (fast_trial scores best at lr 0.01) rather than anywhere
    # in 1e-3..0.1
    drawn = [t.config["lr"] for t in record.real() if not t.config.get("point")]
    assert all(abs(math.log10(lr) + 2) < 0.8 for lr in drawn), drawn
