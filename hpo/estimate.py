"""How long a running study has left: ASHA's expected epochs per trial, and the trials packed
into the slots they run in. Pure functions; the live view (hpo.live) feeds them what trials
measured.
"""

from __future__ import annotations

import heapq
from typing import Sequence


def expected_epochs(done: int, epochs: int, rungs: Sequence[int],
                    reduction_factor: float) -> float:
    """Epochs a trial that has trained `done` of its `epochs` can expect to train still under
    ASHA: on to its next rung for sure, past each later rung with chance 1/reduction_factor
    (ASHA keeps the top 1/reduction_factor of the trials at a rung), on to `epochs`."""
    left, chance, at = 0.0, 1.0, done
    for rung in sorted(r for r in rungs if done < r < epochs):
        left += chance * (rung - at)
        chance, at = chance / reduction_factor, rung
    return left + chance * max(0, epochs - at)


def makespan(running: Sequence[float], waiting: Sequence[float], slots: int) -> float:
    """Seconds until the last job ends: `running` jobs (seconds each has left) hold slots,
    each `waiting` job (its seconds) takes the first slot free, `slots` at once."""
    free = sorted([*running, *[0.0] * max(0, slots - len(running))])
    heapq.heapify(free)
    for job in waiting:
        heapq.heappush(free, heapq.heappop(free) + job)
    return max(free, default=0.0)
