"""`hpo search --address` on a real Ray cluster: two raylets on this machine, each with one CPU
and a resource naming it (tests/raycluster.py), token auth as Ray 2.60 requires.

Both raylets have this machine's IP, so a trial's `node` must carry Ray's node id for the
tests to tell where it ran (hpo reports "IP/<node id prefix>").
"""

import json
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from conftest import stored_study
from raycluster import RayCluster

ROOT = Path(__file__).parents[1]
TINY = ROOT / "tests/spaces/tiny.py"
SLOW = ROOT / "tests/spaces/slow.py"
# what a trial may end as; "running" is not among them
ENDED = {"completed", "stopped", "failed", "infeasible", "diverged", "oom"}
SEARCH_TIMEOUT = 300  # s; a driver that hangs after losing a node fails the test, not CI

pytestmark = pytest.mark.cluster


@pytest.fixture
def cluster():
    """A head (1 CPU, resource "head") and a worker (1 CPU, resource "worker"), torn down
    after the test whatever happens: only the processes started here are killed."""
    with RayCluster() as c:
        c.add_node("head", cpus=1, head=True)
        c.add_node("worker", cpus=1)
        c.ids = c.wait_for_nodes()  # {"head": node id hex, "worker": ...}
        yield c


def start_search(cluster, cwd: Path, space: Path, data: Path, name: str, trials: int):
    """`hpo search` as a user runs it against the cluster; output goes to cwd/search.out."""
    out = open(cwd / "search.out", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpo.cli", "search", str(space), "--data", str(data),
         "--address", cluster.address, "--trials", str(trials), "--name", name],
        cwd=cwd, env=cluster.env, stdout=out, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL)
    out.close()
    return proc


def finish(proc, cwd: Path, study: Path) -> None:
    """Wait for the search; on a hang or a non-zero exit, fail with its output and Ray's."""
    try:
        proc.wait(timeout=SEARCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"hpo search still running after {SEARCH_TIMEOUT} s\n{_tails(cwd, study)}")
    assert proc.returncode == 0, f"hpo search exited {proc.returncode}\n{_tails(cwd, study)}"


def _tails(cwd: Path, study: Path) -> str:
    parts = []
    for path in (cwd / "search.out", study / "ray.log"):
        if path.is_file():
            parts.append(f"--- {path.name}:\n{path.read_text(errors='replace')[-4000:]}")
    return "\n".join(parts)


def which_node(value, ids: dict[str, str]) -> str | None:
    """The cluster node ("head", "worker") a reported `node` names by a prefix of its Ray node
    id ("IP/<id prefix>" or the id alone); None for what names no single raylet (an IP)."""
    parts = re.findall(r"[0-9a-f]{6,}", str(value).lower())
    named = {n for n, node_id in ids.items() for p in parts if node_id.startswith(p)}
    return named.pop() if len(named) == 1 else None


def read_csv(path: Path, **kwargs) -> pd.DataFrame:
    # fingerprints and node ids are hex strings: never let pandas make numbers of them
    return pd.read_csv(path, dtype={"trial_id": str, "node": str, "data": str,
                                    "reason": str}, keep_default_na=False,
                       na_values=[""], **kwargs)


def ray_results(study: Path) -> dict[str, list[dict]]:
    """Every result each trial reported to Tune, every attempt included (Ray's result.json;
    epochs.csv keeps only a trial's last attempt)."""
    found = {}
    for path in (study / "ray").glob("*/result.json"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            found[str(rows[0]["config"]["trial"])] = rows
    return found


def test_search_runs_trials_on_both_nodes(cluster, tiny_parquet, tmp_path):
    proc = start_search(cluster, tmp_path, TINY, tiny_parquet, "multi", trials=8)
    study = tmp_path / "results/multi"
    finish(proc, tmp_path, study)

    board = read_csv(study / "leaderboard.csv")
    assert len(board) == 8 and board["trial_id"].is_unique
    assert set(board["status"]) <= ENDED - {"failed"}, board[["trial_id", "status", "reason"]]
    where = board["node"].map(lambda v: which_node(v, cluster.ids))
    assert where.notna().all(), (
        f"`node` must tell the cluster's raylets apart (node ids {cluster.ids}); "
        f"got {sorted(set(board['node']))}: report ray.get_runtime_context().get_node_id()")
    split = Counter(where)
    print(f"\ntrials per node: {dict(split)} ({cluster.ids})")
    assert set(split) == {"head", "worker"}, split

    # every epoch of every trial trained on the driver's data, shipped through the object
    # store to both nodes: the same fingerprint, and no image decoded by a trial
    fingerprint = json.loads((study / "study.json").read_text())["fingerprint"]
    epochs = read_csv(study / "epochs.csv")
    assert set(epochs["trial_id"]) == set(board["trial_id"])
    assert (epochs["data"] == fingerprint).all(), set(epochs["data"])
    assert (epochs["decoded"] == 0).all(), epochs[epochs["decoded"] != 0]
    epoch_nodes = epochs["node"].map(lambda v: which_node(v, cluster.ids))
    assert set(epoch_nodes) == {"head", "worker"}
    # without a failure a trial stays on the node it started on
    assert (epochs.assign(at=epoch_nodes).groupby("trial_id")["at"].nunique() == 1).all()


def wait_for_a_worker_trial(proc, study: Path, ids: dict[str, str], timeout: float = 120):
    """The trials the worker is training now, once one of them has reported an epoch or two
    (the slow space's first ASHA rung is at 3, so such a trial still has epochs to go)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the search ended before any trial ran on the worker"
        try:
            board = read_csv(study / "leaderboard.csv")
        except (FileNotFoundError, pd.errors.EmptyDataError):
            board = None
        if board is not None and len(board):
            known = board.dropna(subset=["node"])
            at = known["node"].map(lambda v: which_node(v, ids))
            assert at.notna().all(), (
                f"`node` must tell the cluster's raylets apart (node ids {ids}); got "
                f"{sorted(set(known['node']))}: report ray.get_runtime_context().get_node_id()")
            busy = known[(at == "worker") & (known["status"] == "running")]
            if len(busy) and busy["epochs_trained"].between(1, 2).any():
                return sorted(busy["trial_id"])
        time.sleep(0.1)
    pytest.fail(f"no trial ran on the worker within {timeout} s")


def test_search_survives_losing_a_node(cluster, tiny_parquet, tmp_path):
    trials = 10
    proc = start_search(cluster, tmp_path, SLOW, tiny_parquet, "lost", trials=trials)
    study = tmp_path / "results/lost"
    try:
        victims = wait_for_a_worker_trial(proc, study, cluster.ids)
        t_kill = time.time()
        cluster.kill("worker")  # SIGKILL its raylet, agents and workers: a machine gone
        finish(proc, tmp_path, study)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    t_end = time.time()

    # every trial is accounted for, none left running, none lost: hpo marks a row it lost
    # track of "failed" with a reason saying so, and a row missing is lost too
    board = read_csv(study / "leaderboard.csv")
    assert board["trial_id"].is_unique
    counts = Counter(board["status"])
    lost = (trials - len(board) + counts["running"]
            + board["reason"].fillna("").str.contains("lost|still running").sum())
    failed = board[board["status"] == "failed"]
    results = ray_results(study)
    moved = sorted(t for t, rows in results.items()
                   if {which_node(r.get("node"), cluster.ids) for r in rows} == {"head", "worker"})
    other = {k: v for k, v in counts.items() if k not in ("completed", "stopped", "failed")}
    print(f"\nkilled the worker while it trained {victims}, {t_end - t_kill:.0f} s before the "
          f"search ended; trials: {len(board)} started, {counts['completed']} completed, "
          f"{counts['stopped']} stopped, {counts['failed']} failed, {lost} lost, other {other}; "
          f"ran again on the head after the loss: {moved}")
    assert lost == 0, board[["trial_id", "status", "reason"]]
    assert len(board) == trials
    assert set(counts) <= ENDED, counts
    # a trial fails only after Tune's retries (max_failures=2), with the error it ended on
    assert (failed["reason"].fillna("") != "").all(), failed[["trial_id", "reason"]]

    # the trial the worker was training went on (Tune's retry, from its last checkpoint) to
    # its end on the node left: its curve has each epoch once, the later ones from the head
    assert moved, f"no trial ran on both nodes; the worker was training {victims}"
    epochs = read_csv(study / "epochs.csv")
    for trial_id in moved:
        curve = epochs[epochs["trial_id"] == trial_id].sort_values("epoch")
        assert list(curve["epoch"]) == list(range(1, len(curve) + 1)), curve
        nodes = [which_node(v, cluster.ids) for v in curve["node"]]
        assert nodes[-1] == "head" and nodes == sorted(nodes, key=["worker", "head"].index)
    # nothing started on the worker after it died
    late = epochs[(epochs["t_start"] > t_kill)
                  & (epochs["node"].map(lambda v: which_node(v, cluster.ids)) == "worker")]
    assert late.empty, late

    # Optuna's study agrees: one trial per Tune trial, each told how it ended
    ran = [t for t in stored_study(study).trials if t.user_attrs.get("hpo_kind") == "trial"]
    states = Counter(t.state.name for t in ran)
    assert len(ran) == trials and states["RUNNING"] == 0, states
    assert states["COMPLETE"] == counts["completed"], (states, counts)
    assert states["PRUNED"] == counts["stopped"], (states, counts)
    assert states["FAIL"] == trials - counts["completed"] - counts["stopped"], (states, counts)


def test_a_trial_no_node_can_take_is_awaited_then_given_up_in_one_line(cluster, tmp_path,
                                                                        tiny_parquet):
    # every node has 1 CPU: a trial of 2 never fits, unless an autoscaler adds a node
    done = subprocess.run(
        [sys.executable, "-m", "hpo.cli", "search", str(TINY), "--data", str(tiny_parquet),
         "--address", cluster.address, "--cpus-per-trial", "2", "--node-wait", "0.1"],
        cwd=tmp_path, env=cluster.env, capture_output=True, text=True, timeout=SEARCH_TIMEOUT)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(err) == 1, done.stderr[-2000:]
    assert "no node of the cluster offers 2 CPU for a trial, and none was added in 0.1 min " \
        "(--node-wait)" in err[0]
    # it said what it waited for, and no run was recorded: nothing started
    assert "waiting up to 0.1 min for the autoscaler to add one" in done.stdout
    assert json.loads((tmp_path / "results/tiny/study.json").read_text())["runs"] == []
