"""A study whose Optuna record is in PostgreSQL (`--storage postgresql+psycopg://...`): a
private server of this module's own (tests/pgserver.py), one database per test.

A search completes with its record there and none in the study folder; a driver killed
mid-search is resumed by the same command with nothing lost and nothing trained twice; an
outage of the server mid-search is ridden out or ends the run cleanly, and the same command
then finishes the study; a bad --storage is one line and exit status 2 before anything starts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pgserver import PgServer, unavailable
from raycluster import kill_session
from recordcheck import (
    ENDED,
    disagreements,
    ended_then_changed,
    epoch_gaps,
    read_record,
    read_views,
    trained_again,
)

ROOT = Path(__file__).parents[1]
TINY = ROOT / "tests/spaces/tiny.py"
OUTAGE_S = 20  # how long the server is down mid-search

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def pg():
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    with PgServer() as server:
        yield server


def command(data: Path, storage: str, trials: int) -> list[str]:
    return [sys.executable, "-m", "hpo.cli", "search", str(TINY), "--data", str(data),
            "--num-cpus", "2", "--trials", str(trials), "--storage", storage]


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)


def start(cmd: list[str], cwd: Path, name: str) -> tuple[subprocess.Popen, Path]:
    """`cmd` in a session of its own, its output to files (a long run fills no pipe);
    (the process, the file of its stderr)."""
    err = cwd / f"{name}.err"
    with open(cwd / f"{name}.out", "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=o, stderr=e, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    return proc, err


def wait_for_ended(folder: Path, proc: subprocess.Popen, n: int, timeout: float = 300) -> None:
    """Wait until the leaderboard shows `n` trials ended, while `proc` runs."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        board, _ = read_views(folder)
        if board.status.isin(ENDED).sum() >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"the search exited {proc.returncode} before {n} trials ended")
        time.sleep(0.2)
    raise TimeoutError(f"{n} trials had not ended after {timeout} s")


def assert_whole(folder: Path, storage: str, trials: int) -> None:
    """The study in `folder` is finished and whole: every trial ended once, in the record and
    the views alike, with all its epochs."""
    board, _ = read_views(folder)
    record = read_record(folder, storage)
    # every trial is there once, and each ended
    assert len(board) == trials and board.trial_id.is_unique, board[["trial_id", "status"]]
    assert set(board.status) <= ENDED, board[["trial_id", "status", "reason"]]
    # the record holds no trial unfinished, real or not
    assert not [t for t in record if t["state"] in ("RUNNING", "WAITING")], record
    # the record and the views agree row for row, epoch for epoch
    problems = disagreements(record, folder)
    assert not problems, "\n".join(problems)
    # each trial's epochs are in epochs.csv, 1..epochs_trained, once each
    gaps = epoch_gaps(folder)
    assert not gaps, "\n".join(gaps)


def test_a_search_keeps_its_record_in_postgres(pg, tiny_parquet, tmp_path):
    url = pg.create_database("complete")
    done = run(command(tiny_parquet, url, 3), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = tmp_path / "results/tiny"
    # the record is in the database, and no SQLite one beside the views
    assert not list(tmp_path.rglob("*.db")), list(tmp_path.rglob("*.db"))
    assert sum(t["real"] for t in read_record(folder, url)) == 3
    assert_whole(folder, url, 3)


def finishes_whole(cmd: list[str], cwd: Path, storage: str, trials: int) -> None:
    """Run `cmd`, the command of the study in `cwd`/results/tiny, again after a kill or an
    outage: it finishes the study, trains nothing that had ended again, loses nothing."""
    folder = cwd / "results/tiny"
    board, epochs = read_views(folder)
    before = read_record(folder, storage)
    again = run(cmd, cwd)
    assert again.returncode == 0, again.stderr[-3000:]
    # the trials that had ended were not trained again, in the views or the record
    retrained = trained_again(board, epochs, folder)
    assert not retrained, "\n".join(retrained)
    changed = ended_then_changed(before, read_record(folder, storage))
    assert not changed, "\n".join(changed)
    assert_whole(folder, storage, trials)


def test_a_killed_driver_is_resumed_by_the_same_command(pg, tiny_parquet, tmp_path):
    url = pg.create_database("killed")
    cmd = command(tiny_parquet, url, 8)
    proc, _ = start(cmd, tmp_path, "first")
    try:
        wait_for_ended(tmp_path / "results/tiny", proc, 2)
    finally:
        # the driver and every process it started die at once, as on a lost machine
        kill_session(proc.pid)
        proc.wait()
    finishes_whole(cmd, tmp_path, url, 8)


def test_an_outage_of_the_server_is_ridden_out_or_stops_cleanly(pg, tiny_parquet, tmp_path):
    url = pg.create_database("outage")
    cmd = command(tiny_parquet, url, 10)
    proc, err = start(cmd, tmp_path, "outage")
    try:
        wait_for_ended(tmp_path / "results/tiny", proc, 1)
        pg.stop()
        time.sleep(OUTAGE_S)
        pg.start()
        rc = proc.wait(timeout=600)
    finally:
        if not pg.running:
            pg.start()
        if proc.poll() is None:  # hung
            kill_session(proc.pid)
            proc.wait()
    stderr = err.read_text(errors="replace")
    if rc != 0:
        lines = stderr.strip().splitlines()
        # stopped: one clean line, no traceback on the terminal
        assert "Traceback" not in stderr, stderr[-3000:]
        assert len(lines) == 1, stderr[-3000:]
        # the line names the storage (without its password) and the command that resumes
        assert pg.password not in lines[0], lines[0]
        assert "storage" in lines[0].lower() or f"127.0.0.1:{pg.port}" in lines[0], lines[0]
        assert "hpo search" in lines[0], lines[0]
    finishes_whole(cmd, tmp_path, url, 10)


@pytest.fixture(scope="module")
def existing(pg) -> str:
    """The name of a database that exists, for the bad --storage values that are not about
    the database."""
    pg.create_database("existing")
    return "existing"


BAD_STORAGE = {
    "a wrong password": lambda pg, db: pg.url(db, password="not-the-password-7f3a"),
    "a missing database": lambda pg, db: pg.url("no_such_database"),
    "an unknown scheme": lambda pg, db: "foo://x",
    # a driver hpo does not install (SQLAlchemy 2.0 takes a bare postgresql:// for this one;
    # 2.1 takes psycopg, which hpo's extra installs)
    "psycopg2, not installed": lambda pg, db: pg.url(db, driver="postgresql+psycopg2"),
}


@pytest.mark.parametrize("case", list(BAD_STORAGE))
def test_a_bad_storage_is_one_line_before_anything_starts(case, pg, existing, tiny_parquet,
                                                          tmp_path):
    if case == "psycopg2, not installed":
        try:
            import psycopg2  # noqa: F401

            pytest.skip("psycopg2 is installed here: the URL would work")
        except ImportError:
            pass
    url = BAD_STORAGE[case](pg, existing)
    # with torch and Ray not importable: the storage is checked before either is needed
    code = ("import sys; sys.modules.update(dict.fromkeys(['torch', 'ray'])); "
            "from hpo.cli import main; sys.exit(main())")
    env = {k: v for k, v in os.environ.items() if k != "WANDB_PROJECT"}
    out = subprocess.run([sys.executable, "-c", code, *command(tiny_parquet, url, 2)[3:]],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env,
                         stdin=subprocess.DEVNULL)
    said = out.stdout + out.stderr
    lines = said.strip().splitlines()
    assert out.returncode == 2, said[-3000:]
    assert len(lines) == 1 and "Traceback" not in said, said[-3000:]
    # the line names the URL, without its password
    assert pg.password not in said and "not-the-password-7f3a" not in said, lines[0]
    assert url.split("@")[-1] in lines[0], lines[0]
    # nothing of a study was made
    assert not (tmp_path / "results").exists(), list(tmp_path.rglob("*"))
