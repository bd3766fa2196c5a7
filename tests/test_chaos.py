"""Chaos: one study, run by the same command again and again while SIGKILL takes, at random
moments, either the driver with every process it started (its session, as a lost machine) or
only the worker process of a running trial. The driver is started again after each kill of
it; a worker's kill it must survive, retrying the trial from its checkpoint. The first three
kills take the driver 1-10 s after its start, in the first seconds of the brand-new study:
while it loads the data and Ray starts, before study.json exists (the log says which kills
came before it). Then the same command runs to the end, and the study must be whole: every
trial ended once, none trained twice, no epoch lost or repeated, the Optuna record and the
views (the leaderboard, epochs.csv) agreeing row for row, no temporary file left behind.

The kill schedule comes from a seeded RNG: HPO_CHAOS_SEED=N replays a schedule (timings on a
loaded machine still differ). Each kill's time, victim and effect is in the log that a failure
prints, and in chaos.log in the test's folder.

The chaos runs once, in a module fixture; each test checks one rule on what it left.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest

from raycluster import kill_session, session_pids
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
TRIALS = 32  # more than the runs between the kills can finish, on an idle machine too
KILLS = 12  # in all, driver and worker kills
EARLY = 3  # of them first: the driver's, 1-10 s after each of the first starts
MAX_RUNS = 40  # starts of the command, at most: a search that never ends fails, not hangs
UNFINISHED = {"running", "interrupted"}

pytestmark = pytest.mark.chaos


@dataclass
class Snapshot:
    """What the study held just after a kill: the views, and the record after a driver kill
    (nothing writes it then)."""

    kill: int
    board: pd.DataFrame
    epochs: pd.DataFrame
    record: list[dict] | None


@dataclass(repr=False)
class Chaos:
    """What the chaos did and left: its log, the snapshots after each kill, the runs that
    ended on their own with an error, the final run's exit status and stderr."""

    folder: Path
    seed: int
    log: list[str] = field(default_factory=list)
    snapshots: list[Snapshot] = field(default_factory=list)
    driver_kills: int = 0
    worker_kills: int = 0
    early_kills: int = 0  # of the driver, in the first seconds of the first starts
    before_meta: int = 0  # driver kills before study.json existed
    unexpected: list[str] = field(default_factory=list)
    final_rc: int | None = None
    final_err: str = ""

    @property
    def kills(self) -> int:
        return self.driver_kills + self.worker_kills

    def note(self, line: str) -> None:
        self.log.append(line)
        print(line, flush=True)

    def story(self) -> str:
        """The log, for an assertion's message."""
        return (f"\nchaos (HPO_CHAOS_SEED={self.seed}): {self.driver_kills} kills of the driver "
                f"({self.early_kills} in its first seconds, {self.before_meta} before "
                f"study.json existed), {self.worker_kills} of a trial's worker\n"
                + "\n".join(self.log[-80:]))


def trial_workers(sid: int) -> list[tuple[int, str]]:
    """(pid, name) of the Ray worker processes of session `sid` that run a trial: `ray::`
    processes other than Ray's idle workers and agents. Ray's workers leave the driver's
    process group but stay in its session."""
    found = []
    for pid in session_pids(sid):
        try:
            name = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        except (OSError, UnicodeDecodeError):
            continue
        if name.startswith("ray::") and name != "ray::IDLE" and not name.endswith("Agent"):
            found.append((pid, name))
    return found


def take_snapshot(chaos: Chaos, with_record: bool) -> None:
    board, epochs = read_views(chaos.folder)
    record = None
    if with_record:
        try:
            record = read_record(chaos.folder)
        except (FileNotFoundError, KeyError):  # no study.db yet, or no study in it
            record = []
    chaos.snapshots.append(Snapshot(chaos.kills, board, epochs, record))


def run_chaos(cwd: Path, data: Path, seed: int) -> Chaos:
    """The chaos, from a brand-new study to the end of the last run; see the module's doc."""
    cmd = [sys.executable, "-m", "hpo.cli", "search", str(TINY), "--data", str(data),
           "--num-cpus", "2", "--trials", str(TRIALS)]
    chaos = Chaos(cwd / "results/tiny", seed)
    chaos.note(f"seed {seed}: {' '.join(cmd[1:])} in {cwd}")
    rng, t_zero, proc = random.Random(seed), time.time(), None

    def note(what: str) -> None:
        chaos.note(f"{time.time() - t_zero:7.1f} s  run {run}: {what}")

    try:
        for run in range(MAX_RUNS):
            out, err = cwd / f"run-{run:02d}.out", cwd / f"run-{run:02d}.err"
            with open(out, "wb") as o, open(err, "wb") as e:
                proc = subprocess.Popen(cmd, cwd=cwd, stdout=o, stderr=e,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
            started = time.time()
            note(f"started, pid {proc.pid}")
            if _kill_some(chaos, proc, rng, started, note):
                continue  # the driver was killed: the same command again
            try:
                rc = proc.wait(timeout=600)
            except subprocess.TimeoutExpired:  # hung: it counts as failed
                kill_session(proc.pid)
                proc.wait()
                rc = None
            stderr = err.read_text(errors="replace")
            note(f"exited {rc} on its own")
            chaos.final_rc, chaos.final_err = rc, stderr
            if rc == 0:
                if chaos.kills < KILLS:
                    note("the study finished before the chaos had all its kills")
                return chaos
            last = (stderr.strip().splitlines() or ["(nothing on stderr)"])[-1]
            chaos.unexpected.append(f"run {run} exited {rc}: {last}\n  its stderr ends:\n"
                                    f"{stderr.strip()[-2000:]}")
            if len(chaos.unexpected) >= 3:
                note("three runs of the same command failed on their own: the chaos stops")
                return chaos
        chaos.note(f"{MAX_RUNS} runs and the study is not finished")
        return chaos
    finally:
        if proc is not None and proc.poll() is None:  # the test itself failed, or a hang
            kill_session(proc.pid)
            proc.wait()


def _kill_some(chaos: Chaos, proc: subprocess.Popen, rng: random.Random, started: float,
               note) -> bool:
    """Kill workers of the run `proc`, or its driver, at random moments until the chaos has
    its kills or the run ends; whether the driver was killed."""
    while chaos.kills < KILLS:
        early = chaos.early_kills < EARLY
        if early:  # the first seconds of the brand-new study: Ray is starting
            victim, at = "driver", started + rng.uniform(1, 10)
        else:
            victim = rng.choice(["driver", "worker"])
            at = time.time() + (rng.uniform(2, 14) if victim == "driver" else rng.uniform(1, 8))
        while time.time() < at and proc.poll() is None:
            time.sleep(0.05)
        if proc.poll() is not None:
            return False
        if victim == "driver":
            before = (chaos.folder / "study.json").exists()
            kill_session(proc.pid)
            proc.wait()
            chaos.driver_kills += 1
            chaos.early_kills += early
            chaos.before_meta += not before
            note(f"kill {chaos.kills}: the driver and its session, "
                 f"{time.time() - started:.1f} s after its start "
                 f"({'study.json existed' if before else 'no study.json yet'})")
            take_snapshot(chaos, with_record=True)
            return True
        deadline = time.time() + 30
        while not (workers := trial_workers(proc.pid)) and time.time() < deadline \
                and proc.poll() is None:
            time.sleep(0.1)
        if not workers:
            note("no trial worker to kill")
            continue
        pid, name = rng.choice(sorted(workers))
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            note(f"worker {pid} ended before its kill")
            continue
        chaos.worker_kills += 1
        note(f"kill {chaos.kills}: worker {pid} ({name}) of {len(workers)}, "
             f"{time.time() - started:.1f} s after the start")
        take_snapshot(chaos, with_record=False)
    return False


@pytest.fixture(scope="module")
def chaos(tmp_path_factory, tiny_parquet):
    seed = int(os.environ.get("HPO_CHAOS_SEED") or random.SystemRandom().randrange(10**6))
    cwd = tmp_path_factory.mktemp("chaos")
    # Ray's session folders in a short folder of this test's (a socket path has 107 chars)
    ray_tmp = tempfile.mkdtemp(prefix="hc-", dir="/tmp")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_TMPDIR", ray_tmp)
        try:
            result = run_chaos(cwd, tiny_parquet, seed)
        finally:
            shutil.rmtree(ray_tmp, ignore_errors=True)
    (cwd / "chaos.log").write_text("\n".join(result.log) + "\n")
    return result


def ended(chaos: Chaos) -> None:
    """Fail unless the chaos ended with the study finished: nothing to check otherwise."""
    assert chaos.final_rc == 0, ("the same command did not finish the study (exit status "
                                 f"{chaos.final_rc}):\n{chaos.final_err[-3000:]}"
                                 + chaos.story())


def test_the_chaos_had_its_kills_and_the_same_command_always_went_on(chaos):
    # no run of the command failed on its own: a killed start is taken up by the same
    # command, and a killed worker is retried by its driver
    assert not chaos.unexpected, "\n".join(chaos.unexpected) + chaos.story()
    # the schedule was carried out: enough kills, the first in the new study's first seconds
    assert chaos.kills >= KILLS and chaos.early_kills == EARLY, chaos.story()


def test_the_last_run_exits_0_and_every_trial_ended(chaos):
    ended(chaos)
    board, _ = read_views(chaos.folder)
    assert len(board) == TRIALS, chaos.story()
    # no row is left running or interrupted: each ended, one way or another
    assert not set(board.status) & UNFINISHED, board[["trial_id", "status"]]
    assert set(board.status) <= ENDED, board[["trial_id", "status", "reason"]]
    # the record holds no trial still RUNNING (or WAITING), real or not
    states = {t["number"]: t["state"] for t in read_record(chaos.folder)}
    assert not {n: s for n, s in states.items() if s in ("RUNNING", "WAITING")}, chaos.story()


def test_no_trial_trained_twice(chaos):
    ended(chaos)
    record = read_record(chaos.folder)
    for snap in chaos.snapshots:
        # a trial the views showed ended at a kill keeps exactly the epochs it had then, the
        # same times included: it did not train again
        again = trained_again(snap.board, snap.epochs, chaos.folder)
        assert not again, f"after kill {snap.kill}:\n" + "\n".join(again) + chaos.story()
        # a trial the record held as ended at a kill keeps its state, status and epochs
        changed = ended_then_changed(snap.record or [], record)
        assert not changed, f"after kill {snap.kill}:\n" + "\n".join(changed) + chaos.story()


def test_no_epoch_lost_or_repeated(chaos):
    ended(chaos)
    # epochs.csv has each trial's epochs 1..epochs_trained, each once
    gaps = epoch_gaps(chaos.folder)
    assert not gaps, "\n".join(gaps) + chaos.story()
    _, epochs = read_views(chaos.folder)
    final = {(t, int(e)) for t, e in zip(epochs.trial_id, epochs.epoch)}
    for snap in chaos.snapshots:
        then = {(t, int(e)) for t, e in zip(snap.epochs.trial_id, snap.epochs.epoch)}
        # an epoch the views held at a kill is still there at the end
        assert then <= final, (f"lost after kill {snap.kill}: {sorted(then - final)}"
                               + chaos.story())


def test_the_record_and_the_views_agree(chaos):
    ended(chaos)
    record = read_record(chaos.folder)
    board, _ = read_views(chaos.folder)
    # as many real trials in the record as leaderboard rows, as the study asked for
    assert sum(t["real"] for t in record) == len(board) == TRIALS, chaos.story()
    problems = disagreements(record, chaos.folder)
    assert not problems, "\n".join(problems) + chaos.story()


def test_no_temporary_file_is_left(chaos):
    ended(chaos)
    # every file is replaced whole: a kill leaves no temporary one behind
    left = sorted(str(p.relative_to(chaos.folder)) for p in chaos.folder.rglob(".*.tmp"))
    assert not left, left
