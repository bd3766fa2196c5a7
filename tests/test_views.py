"""The study folder's files are views of the record: rebuilt whole from it at every start of a
run and by `hpo leaderboard` when damaged, never read back as input."""

import json

import pandas as pd
import pytest

from conftest import add_trial, begun, hpo_command
from hpo import views
from hpo.errors import StudyError
from hpo.lock import StudyLock
from hpo.options import SearchOptions
from hpo.plan import plan_search
from hpo.study import begin


@pytest.fixture
def study(tmp_path, tiny_parquet):
    plan, record = begun(tmp_path / "results", tiny_parquet)
    add_trial(record, {"lr": 0.1}, [0.5, 0.6], epochs=2)
    add_trial(record, {"lr": 0.01}, [0.3], epochs=2)
    add_trial(record, {"lr": 0.2}, [0.1], epochs=2, status="running")
    views.rebuild(plan.folder, record)
    return plan, record


def test_every_view_says_what_the_record_says(study):
    plan, record = study
    folder = plan.folder
    board = pd.read_csv(folder.leaderboard)
    assert list(board.trial_id) == [0, 1, 2] and list(board.status) == [
        "completed", "stopped", "running"]
    assert json.loads(folder.configs.read_text())["1"] == {"epochs": 2, "lr": 0.01}
    assert json.loads(folder.best_config.read_text()) == {"epochs": 2, "lr": 0.1}
    assert len(pd.read_csv(folder.epochs)) == 4
    meta = json.loads(folder.meta.read_text())
    assert meta["counts"] == {"completed": 1, "stopped": 1, "running": 1}
    assert meta["best"] == {"trial_id": 0, "val_acc": 0.6}
    assert meta["identity"]["seed"] == 0 and meta["record"].startswith("sqlite:///")
    assert folder.space.read_text() == plan.space.source


def test_views_missing_or_damaged_are_rebuilt_at_the_next_start(study, tiny_parquet):
    plan, _ = study
    folder = plan.folder
    good = {p: p.read_bytes() for p in (folder.leaderboard, folder.epochs, folder.configs)}
    folder.leaderboard.write_text("rank,trial_id\ngarbage\n")
    folder.epochs.unlink()
    folder.configs.write_text("{")
    folder.meta.write_text("[]")
    again = plan_search(plan.space.path, SearchOptions(results=str(folder.path.parent)))
    with StudyLock(folder.path):
        begin(again)
    assert {p: p.read_bytes() for p in good} == good
    assert json.loads(folder.meta.read_text())["counts"]["completed"] == 1


def test_hpo_leaderboard_rebuilds_a_damaged_leaderboard_from_the_record(study):
    plan, _ = study
    with open(plan.folder.leaderboard, "a") as f:
        f.write("9,9,,nonsense,1,,,,,,,\n")
    shown = hpo_command("leaderboard", plan.folder.path, "--csv", cwd=plan.folder.path)
    assert shown.returncode == 0, shown.stderr
    assert "rebuilt from the study's record" in shown.stderr
    assert "nonsense" not in plan.folder.leaderboard.read_text()


def test_a_study_a_driver_holds_is_not_repaired_under_it(study):
    plan, _ = study
    with StudyLock(plan.folder.path):
        with pytest.raises(StudyError, match="a search runs this study"):
            views.repair(plan.folder)
