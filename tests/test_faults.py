"""A fault mid-search ends the search as Ctrl-C does, with one line on the terminal saying what
failed and the command that resumes, and the same command finishes the study with nothing
lost: here, the results folder's filesystem filling up while trials run."""

import contextlib
import os
import subprocess
import sys
import time

import pandas as pd
import pytest

from conftest import TINY
from recordcheck import disagreements, read_record

pytestmark = pytest.mark.e2e


@contextlib.contextmanager
def tmpfs(folder, size: str):
    """A tmpfs of `size` mounted at `folder` (root only; the test skips elsewhere)."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}",
                                            "tmpfs", str(folder)]).returncode:
        pytest.skip("mounting a small filesystem needs root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder) -> None:
    """Write zeros into `folder` until its filesystem has no block left."""
    with contextlib.suppress(OSError), open(folder / "filler", "wb") as f:
        while True:
            f.write(b"\0" * 65536)
            f.flush()


def test_a_full_disk_stops_the_search_in_one_line_and_the_same_command_resumes(
        tmp_path, tiny_parquet):
    cmd = [sys.executable, "-m", "hpo.cli", "search", TINY, "--data", tiny_parquet,
           "--num-cpus", 2, "--trials", 8, "--results", tmp_path / "results",
           "--storage-timeout", 5]
    cmd = [str(c) for c in cmd]
    with tmpfs(tmp_path / "results", "64m") as results:
        board = results / "tiny/leaderboard.csv"
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        deadline = time.time() + 300
        while time.time() < deadline and not (
                board.exists() and (pd.read_csv(board).status == "completed").any()):
            time.sleep(0.2)
        fill(results)
        out, err = proc.communicate(timeout=600)
        lines = err.strip().splitlines()
        # stopped as Ctrl-C stops it: one line on the terminal (not only in ray.log, which
        # is on the full disk), naming what failed and the command that resumes
        assert proc.returncode == 1, (out[-2000:], err[-3000:])
        assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
        assert ("No space left on device" in lines[0] or "disk is full" in lines[0]), lines
        assert "continue with: hpo search" in lines[0], lines
        (results / "filler").unlink()
        again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
        record = read_record(results / "tiny")
        real = [t for t in record if t["real"]]
        assert len(real) == 8 and all(t["state"] != "RUNNING" for t in real)
        assert not disagreements(record, results / "tiny")
        assert not list((results / "tiny").glob(".*.tmp"))
