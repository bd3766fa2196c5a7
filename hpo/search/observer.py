"""The driver's view of the trials as Tune runs them: leaderboard, progress, timings, memory."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from ray import tune

from hpo.leaderboard import Leaderboard
from hpo.packing import Packer
from hpo.progress import Progress


class StudyCallback(tune.Callback):
    """Driver-side observer: feeds the leaderboard and the progress view."""

    def __init__(self, board: Leaderboard, progress: Progress | None,
                 replayed: frozenset[str] = frozenset(), packer: Packer | None = None,
                 ray_start_s: float = 0.0):
        self.board, self.progress, self.packer = board, progress, packer
        self.replayed = replayed  # finished trials that a resume only replays: rows stay as is
        self.ray_start_s = ray_start_s  # starting or joining Ray, before any trial
        # wall-clock spans trials computed (an epoch: training, then evaluation), seconds of
        # them spent training, and trials' whole lives as the driver saw them
        self.intervals: list[tuple[float, float]] = []
        self.train_s = self.lives_s = 0.0
        self._began: dict[str, float] = {}
        self._last_write = 0.0

    def time_spent(self, start: float, end: float, busy: float) -> dict[str, float]:
        """Where the wall time from `start` to `end` went (`busy`: the share of it trials
        computed), and in trial-seconds, trials' time: training, evaluation, and the rest of
        their lives (start-up, data to device, reporting)."""
        computing = sum(t1 - t0 for t0, t1 in self.intervals)
        return {key: round(value, 2) for key, value in {
            "search_s": end - start, "ray_start_s": self.ray_start_s,
            "idle_s": (1 - busy) * (end - start),
            "train_s": self.train_s, "eval_s": computing - self.train_s,
            "trial_other_s": max(0.0, self.lives_s - computing)}.items()}

    def __getstate__(self):
        # Tune pickles its callbacks with the experiment state; a live terminal view can't be
        state = dict(self.__dict__)
        state["progress"] = None
        return state

    def _refresh(self, force: bool = False) -> None:
        now = time.time()
        if force or now - self._last_write > 0.5:
            self.board.write()
            self._last_write = now
        if self.progress:
            counts = Counter(r["status"] for r in self.board.rows.values())
            best = self.board.best()
            self.progress.study_update(counts, best and (
                best[self.board.metric], best["trial_id"], best["config"].get("point", "")))

    def on_trial_start(self, iteration, trials, trial, **info):
        if trial.trial_id in self.replayed:
            return
        self.board.start(trial.trial_id, trial.config)
        self._began[trial.trial_id] = time.time()
        if self.progress:
            self.progress.trial_started(trial.trial_id, trial.config.get("point", ""),
                                        trial.config.get("epochs"))
        self._refresh(force=True)

    def _ended(self, trial_id: str) -> None:
        began = self._began.pop(trial_id, None)
        if began is not None:
            self.lives_s += time.time() - began
        if self.progress:
            row = self.board.rows[trial_id]
            self.progress.trial_ended(trial_id, row["status"], row.get("reason") or "")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if trial.trial_id in self.replayed:
            return
        self.board.result(trial.trial_id, result)
        if self.progress:
            self.progress.trial_result(trial.trial_id, result)
        if "t_start" in result:
            self.intervals.append((result["t_start"], result["t_end"]))
            self.train_s += result["train_seconds"]
        if self.packer and result.get("gpu_peak"):
            self.packer.observe(trial.config, result["gpu_peak"])
        self._refresh()

    def on_trial_complete(self, iteration, trials, trial, **info):
        if trial.trial_id in self.replayed:
            return
        self.board.finish(trial.trial_id)
        self._ended(trial.trial_id)
        self._refresh(force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.board.finish(trial.trial_id, "failed", _last_error_line(trial))
        self._ended(trial.trial_id)
        self._refresh(force=True)

    def on_step_end(self, iteration, trials, **info):
        self._refresh()


def _last_error_line(trial) -> str:
    try:
        lines = Path(trial.error_file).read_text().strip().splitlines()
        return lines[-1][:300] if lines else "error"
    except (OSError, TypeError):
        return "error (no error file)"
