"""A study's identity: what a resume must match is recorded once and compared setting by
setting; what it may change, and what the command leaves out, come from the record."""

import json
from pathlib import Path

import pytest

from hpo.data import load_dataset
from hpo.study import begin_study
from hpo.tuning.options import SearchOptions, StudyError, check_data, plan_search

TINY = Path(__file__).parents[1] / "tests/spaces/tiny.py"


@pytest.fixture
def recorded(tmp_path, tiny_parquet):
    """A study folder whose study.json records a study of tests/spaces/tiny.py."""
    options = SearchOptions(data=str(tiny_parquet), fraction=0.5, split_seed=3, seed=7,
                            max_epochs=3, results=tmp_path / "results")
    plan = plan_search(TINY, options)
    plan.folder.mkdir(parents=True)
    begin_study(plan, load_dataset(tiny_parquet, fraction=0.5, seed=3))
    return plan


def test_a_resume_takes_the_recorded_settings_the_command_leaves_out(recorded):
    plan = plan_search(TINY, SearchOptions(results=recorded.folder.parent, trials=9))
    o = plan.options
    assert (o.fraction, o.split_seed, o.seed, o.data) == (0.5, 3, 7, recorded.options.data)
    assert plan.space.max_epochs == 3 and plan.space.trials == 9 and plan.resumed


@pytest.mark.parametrize("given, message", [
    (dict(fraction=0.25), "--fraction differs from this study's: recorded 0.5, given 0.25"),
    (dict(split_seed=0), "--split-seed differs from this study's: recorded 3, given 0"),
    (dict(seed=1), "--seed differs from this study's: recorded 7, given 1"),
    (dict(max_epochs=4), "--max-epochs differs from this study's: recorded 3, given 4"),
    (dict(storage="sqlite:///elsewhere.db"), "--storage differs"),
])
def test_a_resume_that_differs_names_the_setting_and_both_values(recorded, given, message):
    with pytest.raises(StudyError, match="pass --fresh") as info:
        plan_search(TINY, SearchOptions(results=recorded.folder.parent, **given))
    assert message in str(info.value)


def test_other_images_or_another_space_are_refused(recorded, tmp_path):
    plan = plan_search(TINY, SearchOptions(results=recorded.folder.parent))
    content = plan.meta["identity"]["data"]
    check_data(plan, content)
    with pytest.raises(StudyError, match=f"the images themselves.*content {content}, given b"):
        check_data(plan, "beef")
    other = tmp_path / "tiny.py"
    other.write_text(TINY.read_text() + "\n# edited\n")
    with pytest.raises(StudyError, match="the space file differs"):
        plan_search(other, SearchOptions(results=recorded.folder.parent))


def test_what_a_resume_may_change_is_not_compared(recorded):
    plan = plan_search(TINY, SearchOptions(results=recorded.folder.parent, trials=20,
                                           concurrency=1, cpus_per_trial=2, num_cpus=2,
                                           checkpoint_every=5, keep_checkpoints=True))
    assert plan.options.concurrency == 1 and plan.space.trials == 20


def test_a_folder_that_is_not_a_study_is_left_alone(tmp_path):
    (tmp_path / "results/tiny").mkdir(parents=True)
    (tmp_path / "results/tiny/notes.txt").write_text("mine")
    with pytest.raises(StudyError, match="no study.json, so it is not an hpo study"):
        plan_search(TINY, SearchOptions(data="x", results=tmp_path / "results"))
    (tmp_path / "results/tiny/study.json").write_text(json.dumps({"trials": 3}))
    with pytest.raises(StudyError, match="older hpo that recorded no study identity"):
        plan_search(TINY, SearchOptions(data="x", results=tmp_path / "results"))
