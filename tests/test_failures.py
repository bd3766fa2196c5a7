"""Failures are sorted, recorded and survived: a crashing trial is retried a bounded number of
times, then recorded as failed with its error's last line; Optuna is told FAIL; the search
goes on. Real Ray, with a trainable that crashes for some configs."""

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
import ray
from ray import tune

from conftest import stored_study, study_tuner
from hpo.data import load_dataset
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
    attempts = tmp_path / "attempts"
    attempts.mkdir()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        trainable = tune.with_resources(
            tune.with_parameters(crashes_on_adam, attempts_dir=str(attempts)), {"cpu": 1})
        space = dataclasses.replace(space, trials=6, max_epochs=2, starting_points={})
        tuner, board = study_tuner(space, study, trainable)
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
    stored = stored_study(study)
    assert [t.state.name for t in stored.trials].count("FAIL") == len(failed)


def test_a_crashed_trial_goes_on_from_its_checkpoint(tmp_path, tiny_parquet):
    def crashes_once_in_epoch_3(config, data, metric, mode, marker):
        import hpo.train
        from hpo.tuning.trainable import train_trial

        real = hpo.train.evaluate
        calls = [0]

        def evaluate(*args, **kwargs):
            calls[0] += 1
            if calls[0] == 3 and not Path(marker).exists():
                Path(marker).touch()
                raise RuntimeError("simulated crash in epoch 3")
            return real(*args, **kwargs)

        hpo.train.evaluate = evaluate
        try:
            # a checkpoint after every epoch, so that the crash has one to go on from
            train_trial(config, data, metric, mode, checkpoint_every=0)
        finally:
            hpo.train.evaluate = real

    space = dataclasses.replace(load_space(ROOT / "tests/spaces/tiny.py"), trials=1,
                                max_epochs=4, grace_period=4, starting_points={})
    study = tmp_path / "crash-once"
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        trainable = tune.with_resources(tune.with_parameters(
            crashes_once_in_epoch_3, data=load_dataset(tiny_parquet).without_test(),
            metric="val_acc", mode="max", marker=str(tmp_path / "crashed")), {"cpu": 1})
        tuner, board = study_tuner(space, study, trainable, concurrency=1)
        tuner.fit()
    finally:
        ray.shutdown()
    assert (tmp_path / "crashed").exists()
    row = board.frame().iloc[0]
    assert (row.status, row.epochs_trained) == ("completed", 4)
    # Tune's record of every report: the second attempt began after the checkpoint, not at 1
    reported = [json.loads(line)["epoch"]
                for line in next((study / "ray").glob("*/result.json")).read_text().splitlines()]
    assert reported[:2] == [1, 2] and reported.count(1) == 1 and reported[-1] == 4
    board.write()
    assert list(pd.read_csv(study / "epochs.csv").epoch) == [1, 2, 3, 4]
