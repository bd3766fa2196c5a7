"""Nothing lost: a search killed with SIGKILL, or stopped with Ctrl-C, continues when the same
command runs again."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import stored_study

ROOT = Path(__file__).parents[1]
TINY = ROOT / "tests/spaces/tiny.py"

pytestmark = pytest.mark.e2e


def command(data, trials):
    return [sys.executable, "-m", "hpo.cli", "search", str(TINY), "--data", str(data),
            "--num-cpus", "2", "--trials", str(trials)]


def finished_rows(board: Path) -> pd.DataFrame:
    if not board.exists():
        return pd.DataFrame(columns=["status"])
    df = pd.read_csv(board, dtype={"trial_id": str})
    return df[df.status.isin(["completed", "stopped"])]


def wait_for(predicate, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise TimeoutError("condition not reached")


def test_sigkill_then_same_command_resumes(tmp_path, tiny_parquet):
    board = tmp_path / "results/tiny/leaderboard.csv"
    cmd = command(tiny_parquet, 12)
    proc = subprocess.Popen(cmd, cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: len(finished_rows(board)) >= 3)
    # the driver and every process it started die at once, as on a lost machine
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = time.time()
    before = finished_rows(board).set_index("trial_id")

    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming" in again.stdout
    after = pd.read_csv(board, dtype={"trial_id": str}).set_index("trial_id")
    # every trial is there once, and none is left running
    assert len(after) == 12 and set(after.status) <= {"completed", "stopped", "failed"}
    # trials finished before the kill keep their rows and were not trained again
    assert set(before.index) <= set(after.index)
    curves = pd.read_csv(tmp_path / "results/tiny/epochs.csv", dtype={"trial_id": str})
    for trial_id in before.index:
        assert after.loc[trial_id, "status"] == before.loc[trial_id, "status"]
        assert (curves[curves.trial_id == trial_id]["t_end"] < killed_at).all(), trial_id
    # Optuna's stored study holds the whole history, nothing stuck as RUNNING
    stored = stored_study(tmp_path / "results/tiny")
    states = [t.state.name for t in stored.trials]
    assert "RUNNING" not in states
    assert states.count("COMPLETE") == (after.status == "completed").sum()
    assert states.count("PRUNED") == (after.status == "stopped").sum()


def test_ctrl_c_stops_within_seconds_and_prints_the_resume_command(tmp_path, tiny_parquet):
    board = tmp_path / "results/tiny/leaderboard.csv"
    cmd = command(tiny_parquet, 10)
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    wait_for(lambda: len(finished_rows(board)) >= 1)
    t0 = time.time()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert time.time() - t0 < 30
    assert proc.returncode == 130, err[-2000:]
    assert "stopped by Ctrl-C" in out and "continue with" in out and "hpo search" in out
    kept = finished_rows(board)
    assert len(kept) >= 1
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(pd.read_csv(board)) == 10


def test_more_trials_extend_a_finished_study_and_lost_trials_run_again(tmp_path, tiny_parquet):
    study = tmp_path / "results/tiny"
    first = subprocess.run(command(tiny_parquet, 3), cwd=tmp_path, capture_output=True,
                           text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    # as if a driver had died just after Optuna handed it a 4th trial, before Ray started it:
    # the record says RUNNING, nothing else knows the trial
    stored = stored_study(study)
    lost = stored.ask()
    config = {**json.loads((study / "best.json").read_text()), "lr": 0.0123}
    config.pop("point", None)
    lost.set_user_attr("hpo_config", config)
    lost.set_user_attr("hpo_kind", "trial")

    again = subprocess.run(command(tiny_parquet, 5), cwd=tmp_path, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "3 trials finished, 1 to continue, 1 to start" in again.stdout
    after = pd.read_csv(study / "leaderboard.csv", dtype={"trial_id": str})
    assert len(after) == 5 and set(after.status) <= {"completed", "stopped"}
    # the lost trial ran, under its own number, with its own config
    configs = json.loads((study / "configs.json").read_text())
    assert configs[str(lost.number)] == config
    # the new run drew a new config, not the first run's random draws again
    assert len({c["lr"] for c in configs.values()}) == 5
    states = [t.state.name for t in stored_study(study).trials]
    assert states.count("COMPLETE") + states.count("PRUNED") == 5
    assert not {"RUNNING", "WAITING"} & set(states)
    # a finished study run again is complete: nothing trains, no result changes
    before = {p.name: p.read_bytes() for p in study.glob("*.csv")}
    done = subprocess.run(command(tiny_parquet, 5), cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0 and "this study is complete" in done.stdout
    assert {p.name: p.read_bytes() for p in study.glob("*.csv")} == before


def test_an_epoch_budget_stops_the_run_and_the_same_command_continues(tmp_path, tiny_parquet):
    study = tmp_path / "results/tiny"
    budget = subprocess.run([*command(tiny_parquet, 6), "--epoch-budget", "3"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert budget.returncode == 0, budget.stderr[-2000:]
    assert "stopped by the epoch budget (3 epochs)" in budget.stdout
    first = pd.read_csv(study / "epochs.csv")
    # the trials the budget cut short wait, unfinished, for the next run
    stored = stored_study(study)
    cut = [t for t in stored.trials if t.state.name == "RUNNING"]
    assert cut, "the budget cut no trial short"
    # the epoch of each cut trial's last checkpoint (tiny.py's rungs, at 1 and 2, checkpoint)
    saved = {t.number: torch.load(Path(t.user_attrs["hpo_checkpoint"]) / "train.pt",
                                  weights_only=True)["epoch"]
             for t in cut if t.user_attrs.get("hpo_checkpoint")}
    assert saved, "no trial was cut short after a checkpoint"
    board = pd.read_csv(study / "leaderboard.csv")
    assert set(board[board.status == "interrupted"].trial_id) == {t.number for t in cut}
    meta = json.loads((study / "study.json").read_text())
    assert meta["finished"] is None and meta["runs"][0]["stopped_by"].startswith("the epoch")

    done = subprocess.run(command(tiny_parquet, 6), cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    board = pd.read_csv(study / "leaderboard.csv")
    assert len(board) == 6 and set(board.status) <= {"completed", "stopped"}
    states = [t.state.name for t in stored_study(study).trials]
    assert "RUNNING" not in states
    # a trial cut short after a checkpoint went on from it: Tune's record of the second run
    # starts at the epoch after the checkpoint's
    for number, epoch in saved.items():
        reported = [json.loads(line)["epoch"] for line in
                    (study / f"ray/trial-{number:04d}/result.json").read_text().splitlines()]
        assert reported[0] == epoch + 1, (number, epoch, reported)
    # no epoch trained before the budget stopped the run was lost from the curves
    after = pd.read_csv(study / "epochs.csv")
    for _, row in first.iterrows():
        assert ((after.trial_id == row.trial_id) & (after.epoch == row.epoch)).any()
