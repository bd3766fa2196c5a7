"""Choosing a study's best honestly: one run's validation value is noisy (a few hundred
validation images move it by points), so before the study names its best, the top configs
train again with other seeds at their full epochs, and the best mean over those runs wins.

This module says what is left to run; hpo.tuning.reruns runs it on Ray, and the record keeps
each run (hpo.record: RERUNS) and names the best by mean (Record.best).
"""

from __future__ import annotations

from hpo.record import Record
from hpo.status import Status


def pending(record: Record, metric: str, mode: str, k: int, seeds: int
            ) -> list[tuple[int, int]]:
    """(trial number, seed) of every rerun the selection still needs: the `k` completed
    trials of best single-run value, each with `seeds` more seeds than its own (its seed + 1,
    + 2, ...); none with k or seeds 0."""
    if k <= 0 or seeds <= 0:
        return []
    todo = []
    for t in record.top(metric, mode, {Status.COMPLETED}, k):
        own = t.config.get("seed", 0)
        done = {r["seed"] for r in t.reruns}
        todo += [(t.number, own + j) for j in range(1, seeds + 1) if own + j not in done]
    return todo
