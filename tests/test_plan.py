"""A search planned before anything starts: a study's identity is its record's, a resume takes
what the command leaves out and refuses what differs; a record lost or damaged while its views
say trials ran is refused, never trained over; what a killed start left is taken over. Each
refusal leaves every file as it was."""

import hashlib
import json
from pathlib import Path

import pytest

from conftest import TINY, add_trial, begun
from hpo.errors import StudyError
from hpo.lock import StudyLock
from hpo.options import SearchOptions
from hpo.plan import plan_search
from hpo.study import begin, check_content


def files(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def recorded(tmp_path, tiny_parquet):
    """A study of tests/spaces/tiny.py with its settings recorded and one trial run."""
    plan, record = begun(tmp_path / "results", tiny_parquet, fraction=0.5, split_seed=3,
                         seed=7, max_epochs=3, content="c0ffee")
    add_trial(record, {"lr": 0.1}, [0.5, 0.6, 0.7])
    return plan


def again(plan, space=TINY, **given):
    return plan_search(space, SearchOptions(results=str(plan.folder.path.parent), **given))


def test_a_resume_takes_the_recorded_settings_the_command_leaves_out(recorded):
    plan = again(recorded, trials=9)
    o = plan.options
    assert (o.fraction, o.split_seed, o.seed, o.data) == (0.5, 3, 7, recorded.options.data)
    assert plan.space.max_epochs == 3 and plan.space.trials == 9 and plan.resumed


def test_a_resume_without_trials_keeps_the_recorded_count(recorded):
    assert again(recorded).space.trials == recorded.space.trials
    assert again(recorded, trials=20).space.trials == 20


@pytest.mark.parametrize("given, message", [
    (dict(fraction=0.25), "--fraction differs from this study's: recorded 0.5, given 0.25"),
    (dict(split_seed=0), "--split-seed differs from this study's: recorded 3, given 0"),
    (dict(seed=1), "--seed differs from this study's: recorded 7, given 1"),
    (dict(max_epochs=4), "--max-epochs differs from this study's: recorded 3, given 4"),
])
def test_a_resume_that_differs_names_the_setting_and_both_values(recorded, given, message):
    with pytest.raises(StudyError, match="pass --fresh") as info:
        again(recorded, **given)
    assert message in str(info.value)


def test_other_images_or_another_space_are_refused(recorded, tmp_path):
    plan = again(recorded)
    check_content(plan, "c0ffee")
    with pytest.raises(StudyError, match="the images themselves.*content c0ffee, given beef"):
        check_content(plan, "beef")
    other = tmp_path / "tiny.py"
    other.write_text(TINY.read_text() + "\n# edited\n")
    with pytest.raises(StudyError, match="the space file differs"):
        again(recorded, space=other)


def test_what_a_resume_may_change_is_not_compared(recorded):
    plan = again(recorded, trials=20, concurrency=1, cpus_per_trial=2, num_cpus=2,
                 checkpoint_every=5, keep_checkpoints=True)
    assert plan.options.concurrency == 1 and plan.space.trials == 20


def test_a_lost_record_is_refused_and_nothing_changes(recorded):
    folder = recorded.folder
    folder.record.rename(folder.path.parent / "elsewhere.db")
    before = files(folder.path)
    with pytest.raises(StudyError, match=r"study.db: the study's record is missing, though "
                       r"study.json.*say trials ran; restore it.*--fresh"):
        again(recorded)
    assert files(folder.path) == before


def test_a_damaged_record_is_refused_and_nothing_changes(recorded):
    folder = recorded.folder
    folder.record.write_bytes(folder.record.read_bytes()[:5000])
    before = files(folder.path)
    with pytest.raises(StudyError, match="study.db: the study's record is unreadable"):
        again(recorded)
    assert files(folder.path) == before


def test_what_a_killed_start_left_is_taken_over(tmp_path, tiny_parquet):
    options = dict(data=str(tiny_parquet), results=str(tmp_path / "results"))
    folder = tmp_path / "results/tiny"
    # killed as Ray started: only the lock file and ray.log
    folder.mkdir(parents=True)
    (folder / ".lock").write_text("host h, PID 1, since then\n")
    (folder / "ray.log").write_text("starting Ray\n")
    (folder / ".study.json.x1.tmp").write_text("{")
    assert not plan_search(TINY, SearchOptions(**options)).resumed
    # killed while the record's tables were being made: a study.db SQLite cannot read
    (folder / "study.db").write_bytes(b"SQLite format 3\x00" + b"\x00" * 50)
    plan = plan_search(TINY, SearchOptions(**options))
    with StudyLock(plan.folder.path):
        record = begin(plan)
    assert record.meta["hpo_identity"]["seed"] == 0
    # begin cleared the temporary a killed write left
    assert not list(folder.glob("*.tmp"))


def test_a_study_born_without_a_trial_starts_over_with_new_settings(tmp_path, tiny_parquet):
    results = tmp_path / "results"
    begun(results, tiny_parquet, fraction=0.5)  # a start that failed before any trial
    plan, record = begun(results, tiny_parquet, fraction=0.25)
    assert record.meta["hpo_identity"]["fraction"] == 0.25 and not record.trials


def test_a_folder_that_is_not_a_study_is_left_alone(tmp_path):
    (tmp_path / "results/tiny").mkdir(parents=True)
    (tmp_path / "results/tiny/notes.txt").write_text("mine")
    with pytest.raises(StudyError, match="holds files but no study record"):
        plan_search(TINY, SearchOptions(data="x", results=str(tmp_path / "results")))


def test_a_record_in_a_database_needs_its_url_again(recorded):
    meta = json.loads(recorded.folder.meta.read_text())
    meta["record"] = "postgresql+psycopg://hpo:***@db/hpo"
    recorded.folder.meta.write_text(json.dumps(meta))
    recorded.folder.record.unlink()
    with pytest.raises(StudyError, match=r"record is in postgresql\+psycopg://hpo:\*\*\*@db/"
                       r"hpo .*pass --storage with its URL and password"):
        again(recorded)
