"""The selection (hpo.selection, hpo.tuning.reruns): the top configs run again with other
seeds, and the study's best is the best mean over those runs, in the record, the leaderboard,
best.json and study.json; a resume runs what is left of it, and nothing twice."""

import json
import math

import pandas as pd
import pytest

from conftest import TINY, add_trial, begun, search
from hpo.record import Record
from hpo.selection import pending
from hpo.status import Status


def lucky(config, data=None, metric="val_acc", mode="max", rungs=(), checkpoint_every=0,
          resume=None):
    """A trainable whose value is its lr's quality plus a seed's luck of up to 0.3: one run
    of a config says little of the next, as on a small validation set."""
    from ray import tune

    epochs = config["epochs"]
    for epoch in range(1, epochs + 1):
        value = value_of(config, epoch)
        tune.report({"epoch": epoch, "epochs": epochs, "val_acc": value, "val_loss": 1 - value,
                     "params": 1000, "img_per_s": 100.0, "train_seconds": 0.01, "t_start": 0.0,
                     "t_end": 0.01,
                     "status": "completed" if epoch == epochs else "running"})


def value_of(config, epoch=None):
    import math

    epochs = config["epochs"]
    quality = max(0.05, 0.6 - abs(math.log10(config["lr"]) + 2) / 4)
    luck = 0.3 * (math.sin(config["seed"] * 12.9898 + config["lr"] * 78.233) * 43758.5453 % 1)
    return (quality + luck) * (epoch or epochs) / epochs


@pytest.mark.e2e  # three runs of a study; the session's finished_study reruns for real too
def test_the_best_mean_over_seeds_names_the_best_and_a_resume_reruns_nothing(tmp_path,
                                                                            tiny_parquet):
    results = tmp_path / "results"
    folder = search(TINY, results, tiny_parquet, lucky, trials=6, select=0)
    board = pd.read_csv(folder / "leaderboard.csv")
    assert "val_acc_mean" not in board.columns  # no selection: one run's value decides
    record = Record.load(f"sqlite:///{folder / 'study.db'}", "tiny")
    assert all(not t.reruns for t in record.real())

    # the study run again asking for the selection: no trial more, the top 3 completed
    # configs train with seeds 1 and 2 (theirs is 0), at their full epochs
    search(TINY, results, tiny_parquet, lucky, select=3, select_seeds=2)
    record = Record.load(f"sqlite:///{folder / 'study.db'}", "tiny")
    assert len(record.real()) == 6
    top = record.top("val_acc", "max", {Status.COMPLETED}, 3)
    for t in top:
        assert [r["seed"] for r in t.reruns] == [1, 2]
        for r in t.reruns:
            assert r["status"] == "completed"
            assert math.isclose(r["value"], value_of({**t.config, "seed": r["seed"]}))
    assert all(not t.reruns for t in record.real() if t not in top)
    means = {t.number: sum(value_of({**t.config, "seed": s}) for s in (0, 1, 2)) / 3
             for t in top}
    chosen = max(means, key=means.get)
    assert record.best("val_acc", "max").number == chosen

    board = pd.read_csv(folder / "leaderboard.csv")
    first = board.iloc[0]
    assert first.trial_id == chosen and first.runs == 3
    assert math.isclose(first.val_acc_mean, means[chosen])
    assert list(board.trial_id[:3]) == sorted(means, key=means.get, reverse=True)
    assert board.runs.notna().sum() == 3
    config = json.loads((folder / "best.json").read_text())
    assert config == record.trials[chosen].config
    best = json.loads((folder / "study.json").read_text())["best"]
    assert best["trial_id"] == chosen and best["seeds"] == [0, 1, 2]
    assert math.isclose(best["val_acc_mean"], means[chosen])

    # without --select, the study's own (3 x 2) holds: it is complete, nothing runs
    runs = len(json.loads((folder / "study.json").read_text())["runs"])
    search(TINY, results, tiny_parquet, lucky, select=None)
    assert len(json.loads((folder / "study.json").read_text())["runs"]) == runs


def test_what_the_selection_still_needs(tmp_path, tiny_parquet):
    _, record = begun(tmp_path / "results", tiny_parquet)
    base = {"seed": 5, "lr": 0.01}
    a = add_trial(record, {**base, "width": 8}, [0.5, 0.9])
    b = add_trial(record, {**base, "width": 16}, [0.4, 0.8])
    add_trial(record, {**base, "lr": 0.1}, [0.95], epochs=2)  # stopped by ASHA: not picked
    add_trial(record, {**base, "lr": 0.02}, [0.6, 0.7])
    assert pending(record, "val_acc", "max", 2, 2) == [(a, 6), (a, 7), (b, 6), (b, 7)]
    assert pending(record, "val_acc", "max", 0, 2) == pending(record, "val_acc", "max", 2, 0) \
        == []
    # before the selection, the best single run; after, the best mean
    assert record.best("val_acc", "max").number == 2
    record.rerun(a, 6, 0.7, Status.COMPLETED)
    record.rerun(a, 7, None, Status.DIVERGED)  # a failed run is no value: the mean of two
    record.rerun(b, 6, 0.8, Status.COMPLETED)
    assert pending(record, "val_acc", "max", 2, 2) == [(b, 7)]
    record.rerun(b, 7, 0.81, Status.COMPLETED)
    again = Record.load(record.url, "tiny")  # as the next run reads it
    assert again.trials[a].mean("val_acc", "max") == pytest.approx((0.8, math.sqrt(0.02), 2))
    assert again.best("val_acc", "max").number == b
    assert pending(again, "val_acc", "max", 2, 2) == []
