"""The searcher over Optuna's ask/tell: draws that cannot be built never become trials and teach
TPE the boundary, repeated configs are not run twice, and every outcome is told truthfully.

Real Optuna (in memory) and real model builds on the meta device; no Ray: the searcher's
Tune-facing methods are called as Tune calls them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo.packing import predict_bytes
from hpo.record import CONSTRAINT, Record, make_sampler
from hpo.space import choice, load_space
from hpo.tuning.searcher import StudySearcher

ROOT = Path(__file__).parents[1]
CIFAR = load_space(ROOT / "spaces/cifar10.py")
TINY = load_space(ROOT / "tests/spaces/tiny.py")


def builds(config):
    """The check hpo makes of a draw before it becomes a trial: the model builds for
    CIFAR's 32x32 images (on the meta device, in milliseconds)."""
    predict_bytes(config, (3, 32, 32), 10)


def searcher_for(space, budget: int, seed: int = 0, check=builds) -> StudySearcher:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), sampler=make_sampler(
        space.sampler, seed, space.startup_trials), direction="maximize")
    return StudySearcher(space, Record(study, "memory"), budget, check)


def complete(searcher: StudySearcher, trial_id: str, value: float = 0.5, epochs: int = 1,
             **result) -> None:
    searcher.on_trial_complete(trial_id, {"epoch": epochs, "epochs": epochs, "val_acc": value,
                                          "status": "completed", **result})


@pytest.mark.e2e  # 90 draws of a TPE, twice: half a minute
def test_rejected_draws_teach_tpe_to_stay_out_of_what_cannot_be_built():
    # about a third of the cifar10 space's random draws cannot be built at 32x32 (valid 5x5
    # convs and too many pools); every feasible trial scores alike, so only the rejections
    # carry information
    first = last = 0
    for seed in (0, 1):
        searcher = searcher_for(CIFAR, budget=90, seed=seed)
        marks = []
        for i in range(90):
            config = searcher.suggest(str(i))
            builds(config)  # what is handed to Tune is always buildable
            marks.append(searcher.rejected)
            complete(searcher, str(i))
        first += marks[29]  # rejected while the first 30 trials were drawn
        last += marks[89] - marks[59]  # ... the last 30
    assert first >= 10 and last < first / 2, (first, last)


def test_a_space_of_nothing_buildable_stops_naming_the_dimensions():
    space = dataclasses.replace(TINY, dimensions={
        **TINY.dimensions, "padding": "valid", "kernel": 5, "stages": choice([2]),
        "pool_last": True}, starting_points={})
    # 32 -> 28 -> pool 14 -> 10 -> pool 5: fine at 32 px; at 12 px nothing builds
    searcher = searcher_for(space, budget=5,
                            check=lambda c: predict_bytes(c, (3, 12, 12), 10))
    assert searcher.suggest("0") == "FINISHED"
    assert searcher.rejected == 200
    assert "200 draws in a row could not be built" in searcher.infeasible
    assert "padding" in searcher.infeasible and "kernel" in searcher.infeasible
    states = {t.state for t in searcher.record.study.get_trials()}
    assert states == {TrialState.PRUNED}


def test_a_repeated_config_is_not_run_again_and_reuses_the_result():
    # a space of two configs: the third draw can only repeat one of them
    space = dataclasses.replace(TINY, dimensions={**{
        k: v for k, v in TINY.dimensions.items() if k not in ("lr", "momentum")},
        "stages": 1, "convs_1": 1, "width": 8, "optimizer": "adam", "lr": 0.01,
        "aug_flip": choice([True, False])}, starting_points={})
    searcher = searcher_for(space, budget=5, check=None)
    a, b = searcher.suggest("a"), searcher.suggest("b")
    assert a["aug_flip"] != b["aug_flip"]
    complete(searcher, "a", 0.7)
    complete(searcher, "b", 0.4)
    assert searcher.suggest("c") == "FINISHED" and searcher.exhausted
    dupes = [t for t in searcher.record.study.get_trials() if t.user_attrs.get("hpo_kind") ==
             "duplicate"]
    assert len(dupes) == searcher.duplicates == 100
    by_original = {a["trial"]: 0.7, b["trial"]: 0.4}
    assert all(t.values == [by_original[t.user_attrs["hpo_duplicate_of"]]] for t in dupes)


def test_every_outcome_is_told_as_it_was():
    searcher = searcher_for(TINY, budget=6, check=None)
    ids = [str(i) for i in range(6)]
    for i in ids:
        searcher.suggest(i)
    for epoch, value in ((1, 0.3), (2, 0.6), (3, 0.5)):
        searcher.on_trial_result("0", {"epoch": epoch, "val_acc": value})
    complete(searcher, "0", 0.5, epochs=4, epoch=4)  # completed: its best epoch's value
    searcher.on_trial_complete("1", {"epoch": 1, "epochs": 4, "val_acc": 0.2,
                                     "status": "running"})  # stopped by ASHA
    searcher.on_trial_complete("2", {"epoch": 2, "epochs": 4, "val_acc": 0.1,
                                     "status": "diverged", "reason": "loss became nan"})
    searcher.on_trial_complete("3", {"epoch": 0, "epochs": 4, "status": "oom"})
    searcher.on_trial_complete("4", None, error=True)  # crashed after its retries
    searcher.stop("Ctrl-C")
    searcher.on_trial_complete("5", None, error=True)  # killed by the stop: continued later
    trials = searcher.record.study.get_trials()
    told = [(t.state, t.user_attrs.get("hpo_status"), t.constraints.get(CONSTRAINT, 0) > 0)
            for t in trials]
    assert told == [(TrialState.COMPLETE, "completed", False),
                    (TrialState.PRUNED, "stopped", False),
                    (TrialState.PRUNED, "diverged", True),
                    (TrialState.PRUNED, "oom", True),
                    (TrialState.FAIL, "failed", False),
                    (TrialState.RUNNING, "running", False)]  # continued in the next run
    assert trials[0].value == 0.6 and trials[0].intermediate_values == {1: 0.3, 2: 0.6,
                                                                       3: 0.5, 4: 0.5}
    assert trials[2].user_attrs["hpo_reason"] == "loss became nan"
    # the record a next run reads: one trial to continue, with its config
    record = Record(searcher.record.study, "memory")
    assert [r.number for r in record.unfinished()] == [trials[5].number]
    assert record.unfinished()[0].config == trials[5].user_attrs["hpo_config"]
