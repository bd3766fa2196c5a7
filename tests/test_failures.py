"""Failures are sorted, recorded and survived: a crashing trial is retried a bounded number of
times from its checkpoint, then recorded as failed with its error's last line; Optuna is told
FAIL; the search goes on. The real driver, with a trainable injected that crashes."""

import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import TINY, search, stored_study
from hpo.record import Record


def crashes_on_adam(config, data=None, metric="val_acc", mode="max", rungs=(),
                    checkpoint_every=0, resume=None):
    from ray import tune

    # one file per attempt, so the test can count retries across worker processes
    Path(config["attempts"], f"{config['optimizer']}-{config['lr']}-{id(config)}").touch()
    if config["optimizer"] == "adam":
        raise RuntimeError("simulated crash in the trial process")
    for epoch in (1, 2):
        tune.report({"epoch": epoch, "epochs": 2, "val_acc": 0.1 * epoch, "params": 1,
                     "status": "completed" if epoch == 2 else "running"})


def test_crashes_are_retried_then_recorded_failed_with_their_last_line(tmp_path, tiny_parquet):
    attempts = tmp_path / "attempts"
    attempts.mkdir()

    def crashes(config, **kwargs):
        return crashes_on_adam({**config, "attempts": str(attempts)}, **kwargs)

    space = tmp_path / "crashy.py"
    space.write_text(TINY.read_text() + "\nstarting_points = {}\n")
    folder = search(space, tmp_path / "results", tiny_parquet, trainable=crashes, trials=4,
                    max_epochs=2)
    rows = pd.read_csv(folder / "leaderboard.csv")
    failed = rows[rows.status == "failed"]
    assert len(rows) == 4 and len(failed) >= 1 and (rows.status != "running").all()
    assert failed["reason"].str.contains("simulated crash in the trial process").all()
    assert set(rows[rows.status != "failed"]["optimizer"]) == {"sgd"}
    # each crashing config ran 1 + max_failures (2) times, no more
    adam_attempts = [p for p in attempts.iterdir() if p.name.startswith("adam")]
    assert len(adam_attempts) == 3 * len(failed)
    stored = stored_study(folder)
    assert [t.state.name for t in stored.trials].count("FAIL") == len(failed)


@pytest.mark.e2e  # a real trial, crashed and continued: half a minute
def test_a_crashed_trial_goes_on_from_its_checkpoint(tmp_path, tiny_parquet):
    marker = tmp_path / "crashed"

    def crashes_once_in_epoch_3(config, data, metric, mode, rungs=(), checkpoint_every=0,
                                resume=None):
        import hpo.train
        from hpo.tuning.trainable import train_trial

        real = hpo.train.evaluate
        calls = [0]

        def evaluate(*args, **kwargs):
            calls[0] += 1
            if calls[0] == 3 and not marker.exists():
                marker.touch()
                raise RuntimeError("simulated crash in epoch 3")
            return real(*args, **kwargs)

        hpo.train.evaluate = evaluate
        try:
            # a checkpoint after every epoch, so that the crash has one to go on from
            train_trial(config, data, metric, mode, rungs, checkpoint_every=0, resume=resume)
        finally:
            hpo.train.evaluate = real

    space = tmp_path / "once.py"
    space.write_text(TINY.read_text() + "\nstarting_points = {}\n")
    folder = search(space, tmp_path / "results", tiny_parquet, trainable=crashes_once_in_epoch_3,
                    trials=1, grace_period=4, concurrency=1)
    assert marker.exists()
    t = Record.load(f"sqlite:///{folder / 'study.db'}", folder.name).real()[0]
    assert (t.status, t.epochs_trained) == ("completed", 4)
    # Tune's record of every report: the second attempt began after the checkpoint, not at 1
    reported = [json.loads(line)["epoch"]
                for line in next((folder / "ray").glob("*/result.json")).read_text().splitlines()]
    assert reported[:2] == [1, 2] and reported.count(1) == 1 and reported[-1] == 4
    assert list(pd.read_csv(folder / "epochs.csv").epoch) == [1, 2, 3, 4]

