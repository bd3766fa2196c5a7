"""Tune's searcher for one run of a study, over the study's record (hpo.record).

Every trial is an Optuna trial, asked for with `ask()` and told how it ended: the record says
how (its table of statuses and Optuna states). A run first continues the trials the record
says are unfinished, then asks Optuna for new ones. A draw that cannot be built, or would not
fit the device, is rejected before it becomes a trial ("rejected" draws: no trial slot, no Ray
worker, no leaderboard row) and another is drawn in its place; a draw identical to a config
already run is not run again ("duplicate" draws). All record writes happen here, in Tune's
event loop, in the order Tune reports.
"""

from __future__ import annotations

import errno
from collections import Counter
from typing import Any, Callable

from ray.tune.search import Searcher

from hpo.compat import DriverOnly
from hpo.errors import Infeasible, StudyFault
from hpo.record import Record, config_key
from hpo.space import Space
from hpo.status import decide

# how a crashed trial's error reads when its results could not be written
DISK_FULL = ("No space left on device", f"[Errno {errno.ENOSPC}]", "database or disk is full")
MAX_REJECTED_IN_A_ROW = 200
MAX_DUPLICATES_IN_A_ROW = 100  # then the space has (almost) nothing left that has not run


class StudySearcher(DriverOnly, Searcher):
    """Tune's searcher for one run of a study: first the trials the record says to resume,
    then `budget` new trials asked of Optuna. `check` raises Infeasible for a config that
    cannot be built or would not fit; such draws are rejected and drawn again (None: no draw
    is checked, for a trainable that builds no model).

    A fault it cannot ride out (the record unreachable past its timeout; `fault()` from the
    callback, for a full disk) stops the run as Ctrl-C does; `error` says what failed.
    """

    driver_only = ("space", "record", "check", "_resume")

    def __init__(self, space: Space, record: Record, budget: int,
                 check: Callable[[dict[str, Any]], None] | None = None):
        super().__init__(metric=space.metric, mode=space.mode)
        self.space, self.record, self.check = space, record, check
        self._resume = [t.number for t in record.unfinished()]
        self._budget = budget
        self._seen = record.seen()
        self._numbers: dict[str, int] = {}  # Tune's trial id -> the record's trial number
        self._last: dict[str, dict] = {}  # each running trial's last report
        self.rejected = self.duplicates = 0  # in this run
        self._in_a_row = self._repeats = 0
        self.exhausted = False  # every draw repeats a config that ran: nothing new to try
        self._rejected_keys: Counter = Counter()
        self.interrupted = False  # set by stop(): running trials stay unfinished, to resume
        self.stopped_by = ""  # what stopped the run early: Ctrl-C, SIGTERM, a budget, a fault
        self.error: StudyFault | None = None  # a fault that stopped the run
        self.infeasible: str | None = None  # why the space gave up: almost nothing builds
        # a crashed trial's error in one line, by Tune's trial id (the callback reads it)
        self.explain: Callable[[str], str] = lambda trial_id: ""

    # -- Tune's side ----------------------------------------------------------------------
    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.interrupted:
            return Searcher.FINISHED
        try:
            return self._suggest(trial_id)
        except StudyFault as exc:
            self.fault(exc)
            return Searcher.FINISHED

    def _suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self._resume:
            number = self._resume.pop(0)
            self.record.resume(number)
            self._numbers[trial_id] = number
            return {**self.record.trials[number].config, "trial": number}
        if self._budget <= 0 or self.exhausted:
            return Searcher.FINISHED
        while True:
            trial = self.record.ask()
            config = self.record.draw(trial, self.space.sample)
            original = self._seen.get(config_key(config))
            if original is not None:
                self.duplicates += 1
                self.record.duplicate(trial.number, original)
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
                self._reject(trial.number, exc)
                if self.infeasible:
                    return Searcher.FINISHED
                continue
            break
        self._in_a_row = 0
        self.record.start(trial.number, config)
        self._seen[config_key(config)] = trial.number
        self._numbers[trial_id] = trial.number
        self._budget -= 1
        return {**config, "trial": trial.number}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        number = self._numbers.get(trial_id)
        if number is None or self.error:
            return
        self._last[trial_id] = result
        try:
            self.record.epoch(number, result, self.space.metric,
                              report_to_optuna=len(self.space.objectives) == 1)
        except StudyFault as exc:
            self.fault(exc)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        # Tune ends the trials a stop interrupts without a word to us (they stay unfinished
        # in the record, for the next run to continue); one that crashed as the stop came is
        # one of them. A trial that ended on its own, stop or not, is told.
        number = self._numbers.get(trial_id)
        if number is None or (error and self.interrupted) or self.error:
            return
        if result:
            self.on_trial_result(trial_id, result)  # Tune passes the last result only here
        last = result or self._last.get(trial_id) or {}
        self._last.pop(trial_id, None)
        reason = self.explain(trial_id) if error else last.get("reason", "")
        if error and any(sign in reason for sign in DISK_FULL):
            # not the trial's fault, and every retry would fail alike: it goes on later
            self.fault(StudyFault(f"trial {number} cannot write its results ({reason}); the "
                                  "search stopped"))
            return
        others = tuple(last.get(m) for m, _ in self.space.objectives[1:])
        try:
            self.record.end(number, decide(last, error), reason, self.space.metric,
                            self.space.mode, others)
        except StudyFault as exc:
            self.fault(exc)
        self._numbers.pop(trial_id, None)

    def stop(self, why: str) -> None:
        """End this run early (`why`: Ctrl-C, SIGTERM, a budget, a fault): no new trial starts,
        and the trials running now stay unfinished in the record, for the next run."""
        if not self.interrupted:
            self.interrupted, self.stopped_by = True, why

    def fault(self, exc: StudyFault) -> None:
        """A fault the run cannot ride out: stop it as Ctrl-C does, and keep why."""
        if self.error is None:
            self.error = exc
        self.stop("a fault")

    def running(self) -> dict[str, int]:
        """Tune's id -> record number of every trial this run started and did not end."""
        return dict(self._numbers)

    def save(self, checkpoint_path: str) -> None:
        # Tune snapshots its searcher; ours has nothing to save: the record is the record
        with open(checkpoint_path, "w") as f:
            f.write('{"record": "the Optuna study"}')

    def restore(self, checkpoint_path: str) -> None:
        pass

    # -- draws that do not become trials ----------------------------------------------------
    def _reject(self, number: int, exc: Infeasible) -> None:
        self.rejected += 1
        self._in_a_row += 1
        self._rejected_keys.update(k for k in exc.keys if k in self.space.dimensions)
        self.record.reject(number, exc)
        if self._in_a_row >= MAX_REJECTED_IN_A_ROW:
            keys = [k for k, _ in self._rejected_keys.most_common(4)] or ["(none named)"]
            self.infeasible = (f"{self.space.path}: {self._in_a_row} draws in a row could not "
                               f"be built or would not fit (last: {exc}); the dimensions "
                               f"involved: {', '.join(keys)}: narrow their ranges")
            self.stop("a space of draws that cannot be built")
