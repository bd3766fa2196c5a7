"""The leaderboard: rows made from the record's trials, their order, statuses and columns; and
its readers. A real record (SQLite, written as the searcher writes it), no Ray."""

import pandas as pd
import pytest

from conftest import add_trial, begun
from hpo import views
from hpo.errors import StudyError
from hpo.leaderboard import (
    FIXED,
    KEY,
    config_at_rank,
    frame,
    metric_of,
    read_leaderboard,
    read_rows,
    rows_of,
)

CONFIG = {"lr": 0.1, "stages": 2, "convs_1": 1, "convs_2": 2}


@pytest.fixture
def record(tmp_path, tiny_parquet):
    """A study's record holding four trials: two ASHA stopped, one completed, one infeasible."""
    plan, record = begun(tmp_path / "results", tiny_parquet)
    add_trial(record, CONFIG, [0.5, 0.6], epochs=4)
    add_trial(record, CONFIG, [0.7], epochs=4)
    add_trial(record, CONFIG, [0.3, 0.4, 0.9, 0.8], epochs=4)
    add_trial(record, {"lr": 0.2, "stages": 5, "point": "bad"}, [], epochs=4,
              status="infeasible", reason="too deep")
    return plan, record


def test_rows_best_first_with_status_and_best_epoch(record):
    plan, record = record
    df = frame(record.real(), plan.space.objectives)
    assert list(df["trial_id"]) == [2, 1, 0, 3]
    assert list(df["rank"]) == [1, 2, 3, 4]
    # the best value, not the last, and the epoch it came at
    assert df.loc[0, "val_acc"] == 0.9 and df.loc[0, "best_epoch"] == 3
    # a trial that ran its epochs completed; one ASHA cut short is stopped
    assert list(df["status"]) == ["completed", "stopped", "stopped", "infeasible"]
    assert df.loc[3, "reason"] == "too deep" and pd.isna(df.loc[3, "val_acc"])
    assert df.loc[3, "point"] == "bad"
    assert list(df.columns[: len(FIXED) + 1]) == [*KEY, "val_acc", *FIXED[len(KEY):]]
    assert metric_of(df.columns) == "val_acc"
    # hyperparameters follow in the schema's order, per-stage keys by stage
    assert list(df.columns[len(FIXED) + 1:]) == ["epochs", "stages", "convs_1", "convs_2", "lr"]


def test_the_views_are_the_record_and_every_epoch_is_kept(record):
    plan, record = record
    views.rebuild(plan.folder, record)
    board = read_leaderboard(plan.folder.path)
    assert list(board["trial_id"]) == [2, 1, 0, 3]
    curves = pd.read_csv(plan.folder.epochs)
    assert len(curves) == 7 and list(curves[curves.trial_id == 2]["epoch"]) == [1, 2, 3, 4]
    # export gives the exact config the trial received
    assert config_at_rank(plan.folder.path, 1) == {"epochs": 4, **CONFIG}
    with pytest.raises(StudyError, match="no trial at rank 9"):
        config_at_rank(plan.folder.path, 9)


def test_min_mode_sorts_ascending(tmp_path, tiny_parquet):
    space = tmp_path / "loss.py"
    space.write_text("from hpo.space import loguniform\nmetric = 'val_loss'\ntrials = 2\n"
                     "max_epochs = 1\ndimensions = {'lr': loguniform(1e-3, 1e-1)}\n")
    plan, record = begun(tmp_path / "results", tiny_parquet, space=space)
    add_trial(record, {}, [2.0], metric="val_loss")
    add_trial(record, {}, [1.0], metric="val_loss")
    assert list(frame(record.real(), plan.space.objectives)["trial_id"]) == [1, 0]


def test_a_second_objective_marks_the_pareto_front(record):
    plan, record = record
    for acc, params in [(0.9, 1000), (0.7, 10), (0.6, 500), (0.8, 100)]:
        add_trial(record, {}, [acc], params=params)
    df = frame(record.real()[4:], (("val_acc", "max"), ("params", "min"))).set_index("trial_id")
    # trial 6 is beaten by trial 7 on both; each of the others is best at its size
    assert dict(df["pareto"]) == {4: True, 5: True, 6: False, 7: True}


def test_a_trial_continued_from_a_checkpoint_replaces_the_epochs_it_reports_again(record):
    plan, record = record
    number = add_trial(record, {}, [0.5, 0.8, 0.9], epochs=4, status="running")
    # it crashed, and went on from its checkpoint after epoch 2
    for epoch, value in [(3, 0.7), (4, 0.75)]:
        record.epoch(number, {"epoch": epoch, "epochs": 4, "val_acc": value}, "val_acc")
    t = record.trials[number]
    assert [e["epoch"] for e in t.epochs] == [1, 2, 3, 4]
    assert [e["val_acc"] for e in t.epochs] == [0.5, 0.8, 0.7, 0.75]
    assert t.best("val_acc", "max") == (0.8, 2)


def test_a_damaged_leaderboard_is_named_not_parsed(record):
    plan, record = record
    views.rebuild(plan.folder, record)
    with open(plan.folder.leaderboard, "a") as f:
        f.write("garbage,1,2,3,4,5\n")
    for read in (read_leaderboard, read_rows):
        with pytest.raises(StudyError, match="leaderboard.csv: cannot be read .*rebuilds it"):
            read(plan.folder.path)


def test_rows_read_without_pandas_hold_what_pandas_reads(record):
    plan, record = record
    views.rebuild(plan.folder, record)

    def typed(rows):
        return rows.columns, [[(type(v), v) for v in row.values()] for row in rows.rows]

    board = read_rows(plan.folder.path)
    assert typed(board) == typed(rows_of(read_leaderboard(plan.folder.path)))
    assert board.column("val_acc")[3] is None and board.column("point")[3] == "bad"
    assert board.column("trial_id") == [2, 1, 0, 3] and len(board.head(2)) == 2
    # a hand edit in a form pandas reads its own way (spaces around numbers, TRUE) is read as
    # pandas reads it
    text = plan.folder.leaderboard.read_text().splitlines()
    edited = [text[0]] + [",".join(f" {v} " if v.isdigit() else v for v in line.split(","))
                          for line in text[1:]]
    plan.folder.leaderboard.write_text("\n".join(edited) + "\n")
    board = read_rows(plan.folder.path)
    assert typed(board) == typed(rows_of(read_leaderboard(plan.folder.path)))
    assert board.column("trial_id") == [2, 1, 0, 3]
