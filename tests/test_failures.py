"""Failures are sorted, recorded and survived: a crashing trial is retried a bounded number of
times, then recorded as failed with its error's last line; Optuna is told FAIL; the search
goes on. Real Ray, with a trainable that crashes for some configs."""

import dataclasses
from pathlib import Path

import optuna
import pytest
import ray
from ray import tune

from hpo.leaderboard import Leaderboard
from hpo.search import SearchOptions
from hpo.search.driver import new_tuner
from hpo.search.observer import StudyCallback
from hpo.space import load_space

ROOT = Path(__file__).parents[1]
pytestmark = pytest.mark.slow


def test_crashed_trials_are_retried_then_failed_and_the_search_goes_on(tmp_path):
    # defined here, not at module level, so Ray ships it by value to workers that cannot
    # import this test module
    def crashes_on_adam(config, attempts_dir):
        # one file per attempt, so the test can count retries across worker processes
        Path(attempts_dir, f"{config['optimizer']}-{config['lr']}-{id(config)}").touch()
        if config["optimizer"] == "adam":
            raise RuntimeError("simulated crash in the trial process")
        for epoch in (1, 2):
            tune.report({"epoch": epoch, "epochs": 2, "val_acc": 0.1 * epoch, "params": 1,
                         "status": "completed" if epoch == 2 else "running"})

    space = load_space(ROOT / "tests/spaces/tiny.py")
    study = tmp_path / "crashy"
    study.mkdir()
    attempts = tmp_path / "attempts"
    attempts.mkdir()
    board = Leaderboard(study / "leaderboard.csv", "val_acc", "max")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        trainable = tune.with_resources(
            tune.with_parameters(crashes_on_adam, attempts_dir=str(attempts)), {"cpu": 1})
        space = dataclasses.replace(space, trials=6, max_epochs=2, starting_points={})
        tuner = new_tuner(space, SearchOptions(), study, trainable,
                           StudyCallback(board, None), slots=2)
        tuner.fit()
    finally:
        ray.shutdown()
    rows = board.frame()
    failed = rows[rows.status == "failed"]
    assert len(rows) == 6 and len(failed) >= 1 and (rows.status != "running").all()
    assert failed["reason"].str.contains("simulated crash in the trial process").all()
    assert set(rows[rows.status != "failed"]["optimizer"]) == {"sgd"}
    # each crashing config ran 1 + max_failures (2) times, no more
    adam_attempts = [p for p in attempts.iterdir() if p.name.startswith("adam")]
    assert len(adam_attempts) == 3 * len(failed)
    stored = optuna.load_study(study_name="crashy", storage=f"sqlite:///{study / 'study.db'}")
    assert [t.state.name for t in stored.trials].count("FAIL") == len(failed)
