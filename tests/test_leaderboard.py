"""Leaderboard rows, order, statuses and atomic publication, without Ray."""


import pandas as pd
import pytest

from hpo.leaderboard import FIXED, Leaderboard, config_at_rank, read_leaderboard


def board_with_trials(tmp_path, mode="max"):
    board = Leaderboard(tmp_path / "leaderboard.csv", "val_acc", mode)
    trials = [("a", [0.5, 0.6], 4), ("b", [0.7], 4), ("c", [0.3, 0.4, 0.9, 0.8], 4)]
    for tid, values, epochs in trials:
        board.start(tid, {"epochs": epochs, "lr": 0.1, "stages": 2, "convs_1": 1, "convs_2": 2})
        for e, v in enumerate(values, 1):
            board.result(tid, {"epoch": e, "val_acc": v, "params": 100, "img_per_s": 10.0})
        board.finish(tid)
    board.start("d", {"epochs": 4, "lr": 0.2, "stages": 9, "point": "bad"})
    board.result("d", {"epoch": 0, "val_acc": 0.0, "status": "infeasible", "reason": "too deep"})
    board.finish("d")
    return board


def test_rows_best_first_with_status_and_best_epoch(tmp_path):
    board = board_with_trials(tmp_path)
    board.write()
    df = read_leaderboard(tmp_path)
    assert list(df["trial_id"]) == ["c", "b", "a", "d"]
    assert list(df["rank"]) == [1, 2, 3, 4]
    # the best value, not the last, and the epoch it came at
    assert df.loc[0, "val_acc"] == 0.9 and df.loc[0, "best_epoch"] == 3
    # a trial that ran its epochs completed; one ASHA cut short is stopped
    assert dict(zip(df.trial_id, df.status)) == {
        "c": "completed", "b": "stopped", "a": "stopped", "d": "infeasible"}
    assert df.loc[3, "reason"] == "too deep" and pd.isna(df.loc[3, "val_acc"])
    assert list(df.columns[: len(FIXED) + 1]) == [*FIXED[:4], "val_acc", *FIXED[4:]]
    # hyperparameters follow, per-stage keys in stage order
    assert list(df.columns[len(FIXED) + 1 :]) == ["epochs", "stages", "convs_1", "convs_2", "lr"]
    # every epoch of every trial is kept for learning curves
    curves = pd.read_csv(tmp_path / "epochs.csv")
    assert len(curves) == 7 and list(curves[curves.trial_id == "c"]["epoch"]) == [1, 2, 3, 4]


def test_min_mode_sorts_ascending(tmp_path):
    board = Leaderboard(tmp_path / "leaderboard.csv", "val_loss", "min")
    for tid, v in [("x", 2.0), ("y", 1.0)]:
        board.start(tid, {"epochs": 1})
        board.result(tid, {"epoch": 1, "val_loss": v})
    assert list(board.frame()["trial_id"]) == ["y", "x"]


def test_export_returns_the_exact_config(tmp_path):
    board_with_trials(tmp_path).write()
    config = config_at_rank(tmp_path, 1)
    assert config == {"epochs": 4, "lr": 0.1, "stages": 2, "convs_1": 1, "convs_2": 2}
    with pytest.raises(ValueError, match="no trial at rank 9"):
        config_at_rank(tmp_path, 9)


def test_a_second_objective_marks_the_pareto_front(tmp_path):
    board = Leaderboard(tmp_path / "leaderboard.csv", "val_acc", "max", (("params", "min"),))
    for tid, acc, params in [("big", 0.9, 1000), ("small", 0.7, 10), ("worse", 0.6, 500),
                             ("mid", 0.8, 100)]:
        board.start(tid, {"epochs": 1})
        board.result(tid, {"epoch": 1, "val_acc": acc, "params": params})
    df = board.frame().set_index("trial_id")
    # "worse" is beaten by "mid" on both; each of the others is best at its size
    assert dict(df["pareto"]) == {"big": True, "mid": True, "small": True, "worse": False}


def test_a_trial_started_again_replaces_the_epochs_it_reports_again(tmp_path):
    board = Leaderboard(tmp_path / "leaderboard.csv", "val_acc", "max")
    board.start("a", {"epochs": 4})
    for e, v in enumerate([0.5, 0.8, 0.9], 1):
        board.result("a", {"epoch": e, "val_acc": v})
    # it crashed and Tune started it again from its checkpoint after epoch 2
    board.start("a", {"epochs": 4})
    assert board.rows["a"]["val_acc"] == 0.9 and board.rows["a"]["status"] == "running"
    for e, v in [(3, 0.7), (4, 0.75)]:
        board.result("a", {"epoch": e, "val_acc": v})
    board.finish("a")
    board.write()
    row = read_leaderboard(tmp_path).iloc[0]
    assert (row.val_acc, row.best_epoch, row.epochs_trained, row.status) == (
        0.8, 2, 4, "completed")
    curve = pd.read_csv(tmp_path / "epochs.csv")
    assert list(curve.epoch) == [1, 2, 3, 4] and list(curve.val_acc) == [0.5, 0.8, 0.7, 0.75]
