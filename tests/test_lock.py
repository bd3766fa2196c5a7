"""One driver per study: the lock refuses a second driver, names the one holding it, and is
taken over when its holder dies, however it dies."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import stored_study
from hpo.lock import StudyLock, StudyLocked

ROOT = Path(__file__).parents[1]
HOLD = ("import sys, time; from hpo.lock import StudyLock; StudyLock(sys.argv[1]).__enter__(); "
        "print('held', flush=True); time.sleep(120)")


def test_a_second_holder_is_refused_and_a_killed_holders_lock_is_taken_over(tmp_path):
    folder = tmp_path / "results/s"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert f"PID {holder.pid}" in StudyLock(folder).holder()
        with pytest.raises(StudyLocked, match=f"PID {holder.pid}"):
            with StudyLock(folder):
                pass
    finally:
        holder.kill()  # SIGKILL: no goodbye, the lock file stays behind
        holder.wait()
    assert (folder / ".lock").exists() and StudyLock(folder).holder() is None
    with StudyLock(folder):
        assert f"PID {os.getpid()}" in (folder / ".lock").read_text()
    assert not (folder / ".lock").exists()


def test_a_start_that_fails_leaves_no_folder_behind(tmp_path):
    with pytest.raises(RuntimeError):
        with StudyLock(tmp_path / "results/a/b"):
            raise RuntimeError("the data could not be read")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.e2e
def test_two_drivers_started_together_one_refuses_and_the_record_agrees(tmp_path,
                                                                         tiny_parquet):
    cmd = [sys.executable, "-m", "hpo.cli", "search", str(ROOT / "tests/spaces/tiny.py"),
           "--data", str(tiny_parquet), "--num-cpus", "2", "--trials", "4", "--max-epochs", "2",
           "--name", "twin"]
    drivers = [subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [d.communicate(timeout=600) for d in drivers]
    codes = sorted(d.returncode for d in drivers)
    assert codes == [0, 2], outs
    refused, ran = (0, 1) if drivers[0].returncode == 2 else (1, 0)
    lines = outs[refused][1].strip().splitlines()
    assert len(lines) == 1 and "another hpo search is running this study" in lines[0], lines
    assert f"PID {drivers[ran].pid}" in lines[0]
    study = tmp_path / "results/twin"
    board = pd.read_csv(study / "leaderboard.csv")
    trials = [t for t in stored_study(study).trials if t.user_attrs.get("hpo_kind") == "trial"]
    assert len(board) == len(trials) == 4
    assert sorted(board.trial_id) == sorted(t.number for t in trials)
    assert not (study / ".lock").exists()
    assert len(json.loads((study / "study.json").read_text())["runs"]) == 1
