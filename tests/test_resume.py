"""Nothing lost: a search killed with SIGKILL, or stopped with Ctrl-C, continues when the same
command runs again."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

ROOT = Path(__file__).parents[1]
TINY = ROOT / "tests/spaces/tiny.py"

pytestmark = pytest.mark.slow


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
    stored = optuna.load_study(study_name="tiny",
                               storage=f"sqlite:///{tmp_path / 'results/tiny/study.db'}")
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
    assert "resume with" in out and "hpo search" in out
    kept = finished_rows(board)
    assert len(kept) >= 1
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(pd.read_csv(board)) == 10
