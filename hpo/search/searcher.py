"""Optuna behind Ray Tune's searcher interface, telling Optuna the truth about each trial."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from hpo.search.options import SearchOptions

TERMINAL = ("infeasible", "diverged", "oom")


class HpoSearch(OptunaSearch):
    """OptunaSearch that tells Optuna the truth about each trial.

    Ray's OptunaSearch stores a trial that ASHA stopped after one epoch as COMPLETE with its
    one-epoch value, so TPE compares it with full-length trials. Here it is PRUNED with its
    per-epoch values as intermediate values; trials that could not train are FAIL; complete
    trials are told their best epoch's value, as the leaderboard ranks them.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._values: dict[str, dict[int, float]] = {}  # per trial: epoch -> metric
        # with two objectives, metric and mode are lists; the first ranks and ASHA stops on it
        self._multi = isinstance(self.metric, list)
        self._primary = (self.metric[0], self.mode[0]) if self._multi else (self.metric,
                                                                           self.mode)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        value, epoch = result.get(self._primary[0]), int(result.get("epoch", 0))
        if epoch > 0 and value is not None and math.isfinite(value):
            self._values.setdefault(trial_id, {})[epoch] = value
            if self._multi:
                return  # Optuna keeps no intermediate values for several objectives
            try:
                # a trial run again after a resume reports its epochs again: Optuna keeps the
                # first, or refuses when the trial finished after Tune's last snapshot
                self._ot_trials[trial_id].report(value, epoch)
            except (RuntimeError, ValueError):
                pass

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        result = result or {}
        # Tune hands the last result to on_trial_complete instead of on_trial_result
        self.on_trial_result(trial_id, result)
        values = list(self._values.pop(trial_id, {}).values())
        try:
            if error or result.get("status") in TERMINAL or not values:
                self._ot_study.tell(ot_trial, state=TrialState.FAIL)
            elif result.get("epoch", 0) < result.get("epochs", 0):
                self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
            else:
                best = max(values) if self._primary[1] == "max" else min(values)
                others = [result.get(m) for m in self.metric[1:]] if self._multi else []
                self._ot_study.tell(ot_trial, [best, *others] if self._multi else best)
        except (RuntimeError, ValueError):
            # told already: the trial finished after Tune's last snapshot and ran again
            pass
        self._completed_trials.add(trial_id)

    def save(self, checkpoint_path: str) -> None:
        # The space holds the user's `when=` lambdas, which pickle cannot store; the space
        # file is reloaded on restore anyway.
        space, self._space = self._space, None
        try:
            super().save(checkpoint_path)
        finally:
            self._space = space

    def restore(self, checkpoint_path: str) -> None:
        space = self._space
        super().restore(checkpoint_path)
        self._space = space


def storage(options: SearchOptions, study: Path) -> optuna.storages.BaseStorage:
    """Optuna's study: SQLite in the study folder, or --storage (PostgreSQL, MySQL...)."""
    url = options.storage or f"sqlite:///{study.resolve()}/study.db"
    return optuna.storages.RDBStorage(url)
