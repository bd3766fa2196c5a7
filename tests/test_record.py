"""The record (hpo.record): each status told to Optuna as its table says, half-made draws
settled, and a storage that stops answering retried, then given up on in one line."""

import shutil
import threading
import time

import pytest
from optuna.trial import TrialState

from conftest import add_trial, begun, stored_study
from hpo.errors import Infeasible, StudyFault
from hpo.record import REJECTED, Record, RecordUnavailable
from hpo.status import Status


@pytest.fixture
def study(tmp_path, tiny_parquet):
    return begun(tmp_path / "results", tiny_parquet)


@pytest.mark.parametrize("status, state, infeasible", [
    ("completed", TrialState.COMPLETE, False), ("stopped", TrialState.PRUNED, False),
    ("diverged", TrialState.PRUNED, True), ("oom", TrialState.PRUNED, True),
    ("infeasible", TrialState.PRUNED, True), ("failed", TrialState.FAIL, False),
])
def test_each_status_is_told_to_optuna_as_the_table_says(study, status, state, infeasible):
    plan, record = study
    values = [0.4, 0.6] if status in ("completed", "stopped") else [0.4]
    number = add_trial(record, {}, values, epochs=2 if status == "completed" else 4,
                       status=status)
    stored = stored_study(plan.folder.path).trials[number]
    assert stored.state == state and stored.user_attrs["hpo_status"] == status
    # TPE ranks what the config itself caused below every trial that trained
    assert (stored.constraints.get("feasible", 0) > 0) == infeasible
    if state == TrialState.COMPLETE:
        assert stored.values == [0.6]  # its best epoch's value


def test_an_interrupted_trial_stays_unfinished_and_is_continued(study):
    plan, record = study
    number = add_trial(record, {}, [0.4], epochs=4, status="running")
    record.checkpoint(number, "/somewhere/checkpoint_000001")
    record.interrupt(number, "Ctrl-C")
    again = Record.load(plan.url, plan.folder.name)
    t = again.trials[number]
    assert t.unfinished and t.status == Status.INTERRUPTED
    assert t.checkpoint == "/somewhere/checkpoint_000001" and "Ctrl-C stopped" in t.reason
    assert [u.number for u in again.unfinished()] == [number]


def test_a_draw_the_driver_died_with_becomes_a_rejected_draw_with_its_reason(study):
    plan, record = study
    record.ask()  # asked for, the driver killed before its config was stored
    again = Record.load(plan.url, plan.folder.name)
    assert again.settle() == [0]
    t = Record.load(plan.url, plan.folder.name).trials[0]
    assert t.kind == REJECTED and t.state == TrialState.FAIL and "never ran" in t.reason
    assert not again.real()


def test_rejected_and_duplicate_draws_are_counted_not_run(study):
    plan, record = study
    first = add_trial(record, {"lr": 0.1}, [0.5, 0.6])
    draw = record.ask()
    record.reject(draw.number, Infeasible("too deep", ("stages",), 0.5))
    again = record.ask()
    record.duplicate(again.number, first)
    stored = stored_study(plan.folder.path).trials
    assert stored[draw.number].constraints["feasible"] == 0.5
    # a duplicate is given the result of the trial that ran its config
    assert stored[again.number].values == stored[first].values
    assert (record.count("rejected"), record.count("duplicate"), len(record.real())) == (1, 1, 1)


def test_a_storage_that_stops_answering_is_retried_then_given_up_in_one_line(study, tmp_path):
    plan, record = study
    told = []
    record.notify, record.timeout = told.append, 1.0
    saved = tmp_path / "saved.db"
    shutil.copy(plan.folder.record, saved)
    plan.folder.record.write_bytes(b"not a database")
    with pytest.raises(RecordUnavailable, match="could not be written for 1 s") as info:
        record.set_meta("hpo_note", 1)
    assert isinstance(info.value, StudyFault) and "\n" not in str(info.value)
    assert len(told) == 1 and "retrying for up to 1 s" in told[0]
    # back within the time: the write goes through, and that is said
    told.clear()
    record.timeout = 30.0
    threading.Timer(1.0, shutil.copy, (saved, plan.folder.record)).start()
    plan.folder.record.write_bytes(b"not a database")
    t0 = time.time()
    record.set_meta("hpo_note", 2)
    assert time.time() - t0 < 30 and "answers again" in told[-1]
    assert Record.load(plan.url, plan.folder.name).meta["hpo_note"] == 2


def test_a_warm_start_gives_the_sampler_what_the_new_space_can_take(tmp_path, tiny_parquet):
    from conftest import TINY

    # an earlier study: lr 0.05 (inside the new range) and 0.002 (outside it), one stopped by
    # ASHA, one that diverged (not carried)
    old, record = begun(tmp_path / "old", tiny_parquet)
    add_trial(record, {"lr": 0.05, "optimizer": "adam", "stages": 1}, [0.4, 0.6])
    add_trial(record, {"lr": 0.002, "optimizer": "adam", "stages": 2}, [0.3], epochs=4)
    add_trial(record, {"lr": 0.05, "optimizer": "sgd", "stages": 1}, [0.1], status="diverged")
    # the new space narrows lr and no longer searches the optimizer
    space = tmp_path / "narrow.py"
    space.write_text(TINY.read_text() + "\ndimensions['lr'] = loguniform(0.01, 0.1)\n"
                     "dimensions['optimizer'] = 'adam'\nname = 'narrow'\n")
    new, warm = begun(tmp_path / "new", tiny_parquet, space=space,
                      warm_start=str(old.folder.path))
    stored = stored_study(new.folder.path).trials
    assert [t.user_attrs["hpo_kind"] for t in stored] == ["warm", "warm"]
    completed, stopped = stored
    assert completed.params == {"lr": 0.05, "stages": 1} and completed.values == [0.6]
    # a value outside the new range is left out; the curve comes along
    assert stopped.params == {"stages": 2} and stopped.intermediate_values == {1: 0.3}
    assert stopped.state == TrialState.PRUNED
    # they are no trials of the new study
    assert warm.real() == [] and warm.meta["hpo_warm_start"]["trials"] == 2
