"""slurm/hpo.sbatch on a real one-node Slurm (tests/slurmcluster.py): a search run as a batch
job, a job its time limit ends mid-search, and the same job submitted again.

Ray authenticates with a token. The first job is submitted as a user who has none: the script
makes ~/.ray/auth_token (HOME is a folder of the test's). The others get RAY_AUTH_MODE=token
and a token file through sbatch's inherited environment, as tests/raycluster.py does.
"""

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from slurmcluster import SlurmCluster, unavailable

from conftest import stored_study

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "slurm/hpo.sbatch"
TINY = ROOT / "tests/spaces/tiny.py"
ENDED = {"completed", "stopped", "failed", "infeasible", "diverged", "oom"}
# More trials than a 2-core machine finishes inside a job that Slurm kills at its minimum time
# limit, 1 minute (60-90 s in all, 20-50 s of it starting Ray, the driver and the first trial).
TRIALS = 100
SELECTION_RUNS = 3 * 2  # --select 3 --select-seeds 2, hpo search's defaults

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def slurm():
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    with SlurmCluster() as cluster:
        yield cluster


@pytest.fixture
def job_env(tmp_path) -> dict[str, str]:
    """What a user's shell would pass to sbatch: hpo's environment on PATH, Ray's token."""
    token = tmp_path / "ray_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(PATH=f"{Path(sys.executable).parent}:{env['PATH']}", RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN_PATH=str(token), RAY_USAGE_STATS_ENABLED="0")
    return env


def submit(slurm, cwd: Path, env, data: Path, trials: int, minutes: int) -> int:
    return slurm.sbatch(
        ["--nodes=1", f"--cpus-per-task={os.cpu_count()}", "--mem=3000", f"--time={minutes}",
         f"--output={cwd}/slurm-%j.out", str(SCRIPT),
         str(TINY), "--data", str(data), "--trials", str(trials), "--name", "tiny"],
        cwd=cwd, env=env)


def output(cwd: Path, job: int) -> str:
    return (cwd / f"slurm-{job}.out").read_text(errors="replace")


def ended_rows(board: Path) -> pd.DataFrame:
    df = pd.read_csv(board, dtype={"trial_id": str})
    return df[df.status.isin(ENDED)].set_index("trial_id")


def reruns(folder: Path) -> int:
    """How many of the selection's reruns the study has recorded."""
    attrs = stored_study(folder).user_attrs
    return sum(len(runs) for key, runs in attrs.items() if key.startswith("hpo_reruns:"))


def run_to_end(slurm, job: int, cwd: Path) -> str:
    """The job's final state, once no process of it is left: Ray's included."""
    state = slurm.wait(job)
    left = slurm.job_processes(job)
    assert not left, f"job {job} ended ({state}) but left:\n" + "\n".join(left)
    return state


def test_a_search_job_and_one_resubmitted_after_its_time_limit(slurm, job_env, tiny_parquet,
                                                              tmp_path):
    board = tmp_path / "results/tiny/leaderboard.csv"
    # 1. a short search, run to its end: Ray up on the allocation, the search, Ray down
    home = tmp_path / "home"
    home.mkdir()
    no_token = {k: v for k, v in job_env.items() if not k.startswith("RAY_AUTH_")}
    job = submit(slurm, tmp_path, {**no_token, "HOME": str(home)}, tiny_parquet, trials=2,
                 minutes=10)
    assert run_to_end(slurm, job, tmp_path) == "COMPLETED", output(tmp_path, job)[-4000:]
    assert (home / ".ray/auth_token").is_file()
    first = ended_rows(board)
    assert len(first) == 2, output(tmp_path, job)[-4000:]
    assert (tmp_path / "results/tiny/best.json").is_file()
    assert (tmp_path / "ray_results/tiny").is_dir()  # the trials' storage every node reaches

    # 2. the study extended in a job that Slurm's minimum time limit ends mid-search
    job = submit(slurm, tmp_path, job_env, tiny_parquet, trials=TRIALS, minutes=1)
    state = run_to_end(slurm, job, tmp_path)
    cut_at = time.time()
    assert state == "TIMEOUT", output(tmp_path, job)[-4000:]
    before = ended_rows(board)
    assert set(first.index) <= set(before.index)
    # cut mid-search, or after the last trial while the selection reran the best configs
    assert len(before) < TRIALS or reruns(tmp_path / "results/tiny") < SELECTION_RUNS, \
        "the job finished the study before its time limit: add trials"
    print(f"\nended before the time limit: {len(before)} of {TRIALS} trials")

    # 3. the same job again: the study resumes and nothing is lost
    job = submit(slurm, tmp_path, job_env, tiny_parquet, trials=TRIALS, minutes=20)
    assert run_to_end(slurm, job, tmp_path) == "COMPLETED", output(tmp_path, job)[-4000:]
    assert "resuming" in output(tmp_path, job)
    after = pd.read_csv(board, dtype={"trial_id": str}).set_index("trial_id")
    # every trial is there once, and none is left running
    assert len(after) == TRIALS and after.index.is_unique
    assert set(after.status) <= ENDED - {"failed"}, after[["status", "reason"]]
    # trials that had ended before the cut kept their results and were not trained again
    curves = pd.read_csv(tmp_path / "results/tiny/epochs.csv", dtype={"trial_id": str})
    for trial_id in before.index:
        assert after.loc[trial_id, "status"] == before.loc[trial_id, "status"]
        assert (curves[curves.trial_id == trial_id]["t_end"] < cut_at).all(), trial_id
    # Optuna's stored study agrees: the whole history, nothing stuck as RUNNING
    states = [t.state.name for t in stored_study(tmp_path / "results/tiny").trials]
    assert "RUNNING" not in states
    assert states.count("COMPLETE") == (after.status == "completed").sum()
    assert states.count("PRUNED") == (after.status == "stopped").sum()


def test_the_script_needs_a_slurm_job_and_a_space(tmp_path):
    for args, env in (([], {}), (["spaces/cifar10.py"], {"SLURM_JOB_ID": ""})):
        found = subprocess.run(["bash", str(SCRIPT), *args], cwd=tmp_path, capture_output=True,
                               text=True, env={**os.environ, **env}, timeout=60)
        assert found.returncode == 2
        assert len(found.stderr.strip().splitlines()) == 1, found.stderr
        assert found.stderr.startswith("hpo.sbatch: ")
