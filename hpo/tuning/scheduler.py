"""ASHA, asynchronous successive halving, over epochs and keyed by the study's trial numbers.

Ray Tune's ASHAScheduler keeps its rungs in memory, keyed by Tune's trial ids: a resumed search
would start with empty rungs and let every trial through its first few. This one is the same
rule (Li et al., 2020; Ray's implementation with one bracket): at each rung, grace_period x
reduction_factor**k epochs, a trial goes on only if its metric is in the top 1/reduction_factor
of the values recorded there so far. Its rungs are seeded with what the study's record holds
of its earlier runs, and a trial that continues from a checkpoint is not judged again at a
rung it passed.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from hpo.registry import sign


class Rungs(FIFOScheduler):
    """ASHA over `epoch` at `rungs` (Space.rungs()), keyed by config["trial"]. `history` holds
    each recorded trial's metric per epoch ({trial number: {epoch: value}}); its values at the
    rungs seed them."""

    def __init__(self, metric: str, mode: str, rungs: list[int], reduction_factor: float,
                 history: Mapping[int, Mapping[int, float]] = {}):
        super().__init__()
        self._metric_name, self._sign = metric, sign(mode)
        self.reduction_factor = reduction_factor
        self.rungs = list(rungs)
        self._recorded: dict[int, dict[int, float]] = {r: {} for r in self.rungs}
        for number, curve in history.items():
            for rung in self.rungs:
                value = curve.get(rung)
                if value is not None and math.isfinite(value):
                    self._recorded[rung][number] = self._sign * value
        self.stopped = 0

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        epoch, value = result.get("epoch"), result.get(self._metric_name)
        number = trial.config.get("trial")
        if epoch not in self._recorded or value is None or number is None:
            return TrialScheduler.CONTINUE
        recorded = self._recorded[epoch]
        if number in recorded:
            return TrialScheduler.CONTINUE  # judged here before it was interrupted
        score = self._sign * value if math.isfinite(value) else -math.inf
        cutoff = self._cutoff(recorded)
        recorded[number] = score
        if cutoff is not None and score < cutoff:
            self.stopped += 1
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def _cutoff(self, recorded: dict[int, float]) -> float | None:
        if not recorded:
            return None
        return float(np.nanpercentile(list(recorded.values()),
                                      (1 - 1 / self.reduction_factor) * 100))

    def debug_string(self) -> str:
        return "ASHA rungs " + ", ".join(f"{r}: {len(v)} recorded"
                                         for r, v in self._recorded.items())
