"""The study's record and its searcher: Optuna's study behind Tune's Searcher interface.

The Optuna study (study.db, or --storage) is the one record of a study. Every trial hpo runs is
an Optuna trial, asked for with `study.ask()` and told how it ended with `study.tell()`; its
complete config, status, reason and latest checkpoint are its user attributes. A resumed or
extended search reads this record and nothing else to know what ran, what is left, and which
trials to continue from their checkpoints.

Optuna is told the truth, so TPE learns from every outcome:
    completed                 COMPLETE, the best epoch's value (as the leaderboard ranks it)
    stopped by ASHA           PRUNED, with its per-epoch values
    diverged, oom, rejected   PRUNED and infeasible (a constraint > 0): TPE ranks them worst
    crashed after retries     FAIL (not the config's fault, as far as anyone knows)
A draw that cannot be built, or would not fit the device, is rejected before it becomes a
trial ("rejected" draws: no trial slot, no Ray worker, no leaderboard row), and another is drawn
in its place; a draw identical to a config already run is not run again ("duplicate" draws).
"""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import optuna
from optuna.trial import FrozenTrial, TrialState
from ray.tune.search import Searcher

from hpo.config import LABELS
from hpo.model import Infeasible
from hpo.space import Space

# user attributes of an Optuna trial
KIND = "hpo_kind"  # "trial" (ran, or runs), "rejected", "duplicate"
CONFIG = "hpo_config"  # the complete config, as the trial received it
STATUS = "hpo_status"  # the leaderboard's status once it ended
REASON = "hpo_reason"
CHECKPOINT = "hpo_checkpoint"  # URI of its latest checkpoint, while it may be resumed
DUPLICATE_OF = "hpo_duplicate_of"
CONSTRAINT = "feasible"  # > 0: TPE ranks the trial below every feasible one
TERMINAL = ("infeasible", "diverged", "oom")  # outcomes of the config itself
MAX_REJECTED_IN_A_ROW = 200
MAX_DUPLICATES_IN_A_ROW = 100  # then the space has (almost) nothing left that has not run


class SpaceInfeasible(ValueError):
    """Almost every draw of the space is infeasible; one line naming the dimensions."""


@dataclass
class Resumed:
    """A trial an earlier run of the study started and did not finish."""

    number: int
    config: dict[str, Any]
    checkpoint: str | None  # URI of its latest checkpoint, None: it starts from epoch 1
    steps: frozenset[int]  # epochs Optuna already holds values for


@dataclass
class Record:
    """What the Optuna study says of the study's trials."""

    finished: list[FrozenTrial]  # trials that ended, however
    resumed: list[Resumed]  # trials to continue
    rejected: int  # draws rejected before they became trials
    duplicates: int  # draws not run because an identical config had been
    seen: dict[str, int]  # config key -> the trial that ran it

    @classmethod
    def read(cls, study: optuna.Study) -> Record:
        """The record, after failing whatever an earlier driver left half-made (a trial asked
        for but killed before its config was stored)."""
        finished, resumed, seen = [], [], {}
        kinds: Counter = Counter()
        for t in study.get_trials(deepcopy=False):
            kind = t.user_attrs.get(KIND)
            kinds[kind] += 1
            if t.state == TrialState.RUNNING and kind is None:
                study.tell(t.number, state=TrialState.FAIL)
            elif kind == "trial" and CONFIG in t.user_attrs:
                seen[config_key(t.user_attrs[CONFIG])] = t.number
                if t.state == TrialState.RUNNING:
                    resumed.append(Resumed(t.number, t.user_attrs[CONFIG],
                                           t.user_attrs.get(CHECKPOINT),
                                           frozenset(t.intermediate_values)))
                elif t.state.is_finished():
                    finished.append(t)
        return cls(finished, resumed, kinds["rejected"], kinds["duplicate"], seen)


def config_key(config: dict[str, Any]) -> str:
    """What makes two configs the same trial: every value but the labels (a starting point's
    name)."""
    return json.dumps({k: v for k, v in config.items() if k not in LABELS}, sort_keys=True)


def open_study(space: Space, name: str, storage: optuna.storages.BaseStorage,
               seed: int) -> optuna.Study:
    """The Optuna study of a study folder (created on first use), with the space's sampler
    seeded by `seed` plus the trials recorded, so that a resumed search does not redraw the
    random configs of its first run."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = ["maximize" if mode == "max" else "minimize" for _, mode in space.objectives]
    try:
        recorded = len(optuna.load_study(study_name=name, storage=storage).get_trials(
            deepcopy=False))
    except KeyError:  # a new study
        recorded = 0
    return optuna.create_study(study_name=name, storage=storage, directions=directions,
                               sampler=make_sampler(space.sampler, seed + recorded,
                                                    space.startup_trials),
                               load_if_exists=True)


def make_sampler(kind: str, seed: int, startup_trials: int) -> optuna.samplers.BaseSampler:
    """An Optuna sampler by its name in hpo.space.SAMPLERS. TPE gets a constant liar: a trial
    still running counts as a bad one, so trials running side by side spread out."""
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup_trials)
    with warnings.catch_warnings():  # `group` is experimental in Optuna 5.0: we know
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed, constant_liar=True, n_startup_trials=startup_trials,
            multivariate=kind == "tpe-multivariate", group=kind == "tpe-multivariate")


class StudySearcher(Searcher):
    """Tune's searcher for one run of a study: first the trials the record says to resume,
    then `budget` new trials asked of Optuna. `check` raises model.Infeasible for a config
    that cannot be built or would not fit; such draws are rejected and drawn again (None: no
    draw is checked, for a trainable that builds no model)."""

    def __init__(self, space: Space, study: optuna.Study, storage: optuna.storages.BaseStorage,
                 record: Record, budget: int,
                 check: Callable[[dict[str, Any]], None] | None = None):
        super().__init__(metric=space.metric, mode=space.mode)
        self.space, self.study, self.storage, self.check = space, study, storage, check
        self._resume = list(record.resumed)
        self._budget = budget
        self._seen = dict(record.seen)
        self._trials: dict[str, optuna.trial.Trial] = {}  # by Tune's trial id
        self._steps: dict[str, set[int]] = {}  # epochs told to Optuna, per Tune trial id
        self._values: dict[str, dict[int, float]] = {}  # the primary metric per epoch
        self.rejected = self.duplicates = 0  # in this run
        self._in_a_row = self._repeats = 0
        self.exhausted = False  # every draw repeats a config that ran: nothing new to try
        self._rejected_keys: Counter = Counter()
        self.interrupted = False  # set by stop(): running trials stay RUNNING, to resume
        self.stopped_by = ""  # what stopped the run early: Ctrl-C, SIGTERM, a budget
        self.error: str | None = None  # why the searcher gave up, one line

    # -- Tune's side
    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.error or self.interrupted:
            return Searcher.FINISHED
        if self._resume:
            r = self._resume.pop(0)
            trial = optuna.trial.Trial(self.study, self._storage_id(r.number))
            self._trials[trial_id], self._steps[trial_id] = trial, set(r.steps)
            return {**r.config, "trial": r.number}
        if self._budget <= 0 or self.exhausted:
            return Searcher.FINISHED
        while True:
            trial = self.study.ask()
            config = self.space.sample(trial)
            if self._is_duplicate(trial, config):
                self._repeats += 1
                if self._repeats >= MAX_DUPLICATES_IN_A_ROW:
                    self.exhausted = True
                    return Searcher.FINISHED
                continue
            self._repeats = 0
            try:
                if self.check:
                    self.check(config)
            except Infeasible as exc:
                self._reject(trial, exc)
                if self.error:
                    return Searcher.FINISHED
                continue
            break
        self._in_a_row = 0
        trial.set_user_attr(CONFIG, config)
        trial.set_user_attr(KIND, "trial")
        self._seen[config_key(config)] = trial.number
        self._trials[trial_id], self._steps[trial_id] = trial, set()
        self._budget -= 1
        return {**config, "trial": trial.number}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        value, epoch = result.get(self.space.metric), int(result.get("epoch", 0))
        if trial_id not in self._trials or epoch <= 0 or value is None or not math.isfinite(
                value):
            return
        self._values.setdefault(trial_id, {})[epoch] = value
        if len(self.space.objectives) == 1 and epoch not in self._steps[trial_id]:
            # a trial continued from a checkpoint reports again the epochs after it
            self._trials[trial_id].report(value, epoch)
            self._steps[trial_id].add(epoch)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        # Tune ends the trials a stop interrupts without a word to us (they stay RUNNING in
        # the record, for the next run to continue); one that crashed as the stop came is one
        # of them. A trial that ended on its own, stop or not, is told.
        if trial_id not in self._trials or (error and self.interrupted):
            return
        result = result or {}
        self.on_trial_result(trial_id, result)  # Tune passes the last result here, not there
        trial = self._trials.pop(trial_id)
        values = self._values.pop(trial_id, {})
        self._steps.pop(trial_id, None)
        status = outcome(result, error)
        trial.set_user_attr(STATUS, status)
        if result.get("reason"):
            trial.set_user_attr(REASON, str(result["reason"])[:300])
        if status in TERMINAL:
            trial.set_constraint(CONSTRAINT, 1.0)
            self.study.tell(trial, state=TrialState.PRUNED)
        elif status == "stopped":
            self.study.tell(trial, state=TrialState.PRUNED)
        elif status == "completed" and values:
            best = max(values.values()) if self.space.mode == "max" else min(values.values())
            others = [result.get(m) for m, _ in self.space.objectives[1:]]
            self.study.tell(trial, [best, *others] if others else best)
        else:
            self.study.tell(trial, state=TrialState.FAIL)

    def stop(self, why: str) -> None:
        """End this run early (`why`: Ctrl-C, SIGTERM, a budget): no new trial starts, and
        the trials running now stay unfinished in the record, for the next run to continue."""
        if not self.interrupted:
            self.interrupted, self.stopped_by = True, why

    def note_checkpoint(self, trial_id: str, uri: str) -> None:
        """Record where the trial's latest checkpoint is, for a later run to continue it."""
        if trial_id in self._trials:
            self._trials[trial_id].set_user_attr(CHECKPOINT, uri)

    def save(self, checkpoint_path: str) -> None:
        # Tune snapshots its searcher; ours has nothing to save: the Optuna study is the record
        with open(checkpoint_path, "w") as f:
            json.dump({"record": "the Optuna study"}, f)

    def restore(self, checkpoint_path: str) -> None:
        pass

    def __getstate__(self):
        # Tune pickles its config into tuner.pkl, for a Tuner.restore hpo never does; the
        # Optuna study and the space's `when=` lambdas need not (and cannot all) go there
        return {}

    # -- draws that do not become trials
    def _is_duplicate(self, trial: optuna.trial.Trial, config: dict[str, Any]) -> bool:
        original = self._seen.get(config_key(config))
        if original is None:
            return False
        self.duplicates += 1
        trial.set_user_attr(KIND, "duplicate")
        trial.set_user_attr(DUPLICATE_OF, original)
        done = self.study.get_trials(deepcopy=False)[original]
        if done.state == TrialState.COMPLETE:
            self.study.tell(trial, done.values)  # its result, reused
        elif done.state == TrialState.PRUNED:
            for step, value in done.intermediate_values.items():  # none with two objectives
                trial.report(value, step)
            if done.constraints.get(CONSTRAINT, 0) > 0:
                trial.set_constraint(CONSTRAINT, done.constraints[CONSTRAINT])
            self.study.tell(trial, state=TrialState.PRUNED)
        else:  # still running, or crashed: nothing to reuse, and TPE ignores FAIL
            self.study.tell(trial, state=TrialState.FAIL)
        return True

    def _reject(self, trial: optuna.trial.Trial, exc: Infeasible) -> None:
        self.rejected += 1
        self._in_a_row += 1
        self._rejected_keys.update(k for k in exc.keys if k in self.space.dimensions)
        trial.set_user_attr(KIND, "rejected")
        trial.set_user_attr(REASON, str(exc)[:300])
        trial.set_constraint(CONSTRAINT, max(exc.excess, 1e-3))
        self.study.tell(trial, state=TrialState.PRUNED)
        if self._in_a_row >= MAX_REJECTED_IN_A_ROW:
            keys = [k for k, _ in self._rejected_keys.most_common(4)] or ["(none named)"]
            self.error = (f"{self.space.path}: {self._in_a_row} draws in a row could not be "
                          f"built or would not fit (last: {exc}); the dimensions involved: "
                          f"{', '.join(keys)}: narrow their ranges")
            self.stop("a space of draws that cannot be built")

    def _storage_id(self, number: int) -> int:
        study_id = self.storage.get_study_id_from_name(self.study.study_name)
        return self.storage.get_trial_id_from_study_id_trial_number(study_id, number)


def outcome(result: dict[str, Any], error: bool) -> str:
    """How a trial ended, as the leaderboard names it: its own terminal status (infeasible,
    diverged, oom), failed after an error, completed at its full epochs, else stopped."""
    if error:
        return "failed"
    if result.get("status") in TERMINAL:
        return result["status"]
    if not result or result.get("epoch", 0) < result.get("epochs", math.inf):
        return "stopped" if result.get("epoch", 0) > 0 else "failed"
    return "completed"
