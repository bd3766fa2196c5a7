"""How a trial stands: the one list of statuses, their groups, and the one rule deciding how a
trial ended. The record (hpo.record) maps each to an Optuna state; the leaderboard, the live
view, the report and the docs read them from here.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Any, Mapping


class Status(str, Enum):
    """A trial's status, as its leaderboard row and its record say it."""

    RUNNING = "running"
    COMPLETED = "completed"  # trained all its epochs
    STOPPED = "stopped"  # ASHA stopped it at a rung
    INTERRUPTED = "interrupted"  # the search was stopped while it ran: the next run continues it
    FAILED = "failed"  # crashed after its retries, or lost
    DIVERGED = "diverged"  # a non-finite training loss
    OOM = "oom"  # out of device or host memory
    INFEASIBLE = "infeasible"  # could not be built for the input after all

    # a str: a Status compares, formats and serialises as its value
    __str__ = str.__str__
    __format__ = str.__format__

    @property
    def meaning(self) -> str:
        return MEANINGS[self]

    @property
    def ended(self) -> bool:
        """Over for good: not running and not waiting to be continued."""
        return self not in UNFINISHED

    @property
    def failure(self) -> bool:
        """Ended by neither its epochs nor ASHA: its reason says why."""
        return self in FAILURES


MEANINGS = {
    Status.RUNNING: "training now",
    Status.COMPLETED: "trained all its epochs",
    Status.STOPPED: "stopped by ASHA at a rung",
    Status.INTERRUPTED: "the search was stopped while it ran; the same command continues it "
                        "from its last checkpoint",
    Status.FAILED: "crashed after its retries (or was lost); the reason gives the error",
    Status.DIVERGED: "its training loss became NaN or infinite",
    Status.OOM: "ran out of GPU or host memory",
    Status.INFEASIBLE: "could not be built for the input after all",
}
UNFINISHED = frozenset({Status.RUNNING, Status.INTERRUPTED})
# outcomes of the config itself: TPE ranks them below every trial that trained
CONFIG_FAULTS = frozenset({Status.INFEASIBLE, Status.DIVERGED, Status.OOM})
FAILURES = CONFIG_FAULTS | {Status.FAILED}
# trained normally to a value worth ranking; of these, FINISHED may be picked as the best
RANKED = frozenset({Status.RUNNING, Status.COMPLETED, Status.STOPPED, Status.INTERRUPTED})
FINISHED = frozenset({Status.COMPLETED, Status.STOPPED})


def decide(last: Mapping[str, Any] | None, error: bool = False) -> Status:
    """How a trial ended, from its last report: failed after an error; its own terminal
    status (infeasible, diverged, oom); completed at its full epochs; else stopped (by ASHA),
    or failed when it never reported an epoch."""
    if error:
        return Status.FAILED
    last = last or {}
    reported = last.get("status")
    if reported in CONFIG_FAULTS:
        return Status(reported)
    epoch = last.get("epoch") or 0
    if epoch >= last.get("epochs", math.inf):
        return Status.COMPLETED
    return Status.STOPPED if epoch > 0 else Status.FAILED
