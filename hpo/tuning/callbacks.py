"""The driver's Tune callback: what the search shows and keeps as trials run.

After the searcher has written the record (hpo.tuning.searcher), it rebuilds the study
folder's views from it, feeds the live view, keeps best.pt on the best finished trial's best
epoch, records where each trial's latest checkpoint is and deletes a trial's checkpoints when
it ends, and adds up where the time went. A file it cannot write (a full disk) stops the
search as Ctrl-C does, with the reason on the terminal.
"""

from __future__ import annotations

import contextlib
import posixpath
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
from ray import tune

from hpo import compat, views
from hpo.errors import StudyFault
from hpo.folder import StudyFolder
from hpo.live import Progress
from hpo.packing import Packer
from hpo.record import BEST_WEIGHTS, Record
from hpo.tuning.searcher import DISK_FULL, StudySearcher
from hpo.tuning.trainable import best_weights


class StudyCallback(compat.DriverOnly, tune.Callback):
    """Driver-side observer of one run of a study (see the module's docstring)."""

    driver_only = ("folder", "record", "progress", "searcher", "packer", "_trials")

    def __init__(self, folder: StudyFolder, record: Record, searcher: StudySearcher,
                 progress: Progress | None = None, packer: Packer | None = None,
                 ray_start_s: float = 0.0, keep_checkpoints: bool = False):
        self.folder, self.record, self.searcher = folder, record, searcher
        self.progress, self.packer = progress, packer
        self.ray_start_s = ray_start_s  # starting or joining Ray, before any trial
        self.keep_checkpoints = keep_checkpoints
        # wall-clock spans trials computed (an epoch: training, then evaluation), seconds of
        # them spent training, and trials' whole lives as the driver saw them
        self.intervals: list[tuple[float, float]] = []
        self.train_s = self.lives_s = 0.0
        self.epochs = 0  # epochs trained in this run, by all trials
        self._began: dict[str, float] = {}
        self._trials: dict[str, Any] = {}  # Tune's trials by id, while they run
        self._checkpoints: dict[int, tune.Checkpoint] = {}  # latest, by trial number
        self._last_write = 0.0
        searcher.explain = self.error_line

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

    def refresh(self, force: bool = False) -> None:
        """Rebuild the views from the record (at most twice a second unless `force`), and
        update the live view's counts and best."""
        now = time.time()
        if self.searcher.error is None and (force or now - self._last_write > 0.5):
            try:
                views.rebuild(self.folder, self.record)
            except OSError as exc:
                self.searcher.fault(StudyFault(
                    f"{exc.filename or self.folder.path}: cannot write ({exc.strerror}); the "
                    "search stopped with its record whole"))
            self._last_write = now
        if self.progress:
            trials = self.record.real()
            metric, mode = self.searcher.space.metric, self.searcher.space.mode
            best = self.record.best(metric, mode)
            self.progress.study_update(Counter(str(t.status) for t in trials), best and (
                best.best(metric, mode)[0], str(best.number), best.config.get("point", "")))

    def on_trial_start(self, iteration, trials, trial, **info):
        number = trial.config["trial"]
        self._trials[trial.trial_id] = trial
        self._began[trial.trial_id] = time.time()
        if self.progress:
            self.progress.trial_started(str(number), trial.config.get("point", ""),
                                        trial.config.get("epochs"))
        self.refresh(force=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.epochs += result.get("epoch", 0) > 0
        if self.progress:
            self.progress.trial_result(str(trial.config["trial"]), result)
        if "t_start" in result:
            self.intervals.append((result["t_start"], result["t_end"]))
            self.train_s += result["train_seconds"]
        if self.packer and result.get("gpu_peak"):
            self.packer.observe(_config(trial), result["gpu_peak"])
        self.refresh()

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        number = trial.config["trial"]
        self._checkpoints[number] = checkpoint
        t = self.record.trials.get(number)
        if t is not None and t.status is not None and t.status.ended:
            # Tune handed it over after the trial's end: it holds the trial's last weights
            self._keep_if_best(number)
            return
        try:
            self.record.checkpoint(number, _uri(checkpoint))
        except StudyFault as exc:
            self.searcher.fault(exc)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended(trial, _shown(compat.error_log(trial)))

    def on_trial_recover(self, iteration, trials, trial, **info):
        line = self.error_line(trial.trial_id)
        if any(sign in line for sign in DISK_FULL):
            # a retry would fail the same way: stop, as Ctrl-C does, and say why
            self.searcher.fault(StudyFault(f"trial {trial.config['trial']} cannot write its "
                                           f"results ({line}); the search stopped"))
        if self.progress:
            attempt, attempts = compat.retries(trial)
            self.progress.trial_retried(str(trial.config["trial"]), line,
                                        _shown(compat.error_log(trial)), attempt, attempts)

    def on_step_end(self, iteration, trials, **info):
        self.refresh()

    def error_line(self, trial_id: str) -> str:
        """The last line of a crashed trial's error, for its reason."""
        trial = self._trials.get(trial_id)
        try:
            lines = Path(compat.error_file(trial)).read_text().strip().splitlines()
            return lines[-1][:300] if lines else "error"
        except (OSError, TypeError, AttributeError):
            return "error (no error file)"

    def interrupted(self, number: int) -> None:
        """The search stopped while trial `number` ran: it stays unfinished in the record,
        and its checkpoint stays where it is, for the next run to continue from."""
        self.record.interrupt(number, self.searcher.stopped_by)
        self._checkpoints.pop(number, None)

    def _ended(self, trial, log: str | None = None) -> None:
        """A trial is over (ended, or interrupted by a stop): if it is the best finished trial,
        its best epoch's weights become best.pt; then its checkpoints go."""
        number = trial.config["trial"]
        began = self._began.pop(trial.trial_id, None)
        if began is not None:
            self.lives_s += time.time() - began
        self._trials.pop(trial.trial_id, None)
        t = self.record.trials.get(number)
        if t is not None and not t.status.ended:
            self._checkpoints.pop(number, None)  # continued in the next run, from it
        else:
            self._keep_if_best(number)
        if self.progress and t is not None:
            self.progress.trial_ended(str(number), str(t.status), t.reason,
                                      log if t.status.failure else None)
        self.refresh(force=True)

    def _keep_if_best(self, number: int) -> None:
        checkpoint = self._checkpoints.pop(number, None)
        space = self.searcher.space
        best = self.record.best(space.metric, space.mode)
        try:
            if best is not None and best.number == number and checkpoint is not None:
                best_weights(checkpoint, self.folder.best_weights)
                self.record.set_meta(BEST_WEIGHTS, {"trial": number})
        except OSError as exc:
            self.searcher.fault(StudyFault(f"{self.folder.best_weights}: cannot write "
                                           f"({exc.strerror}); the search stopped"))
        except StudyFault as exc:
            self.searcher.fault(exc)
        if checkpoint is not None and not self.keep_checkpoints:
            delete_checkpoints(checkpoint)


def delete_checkpoints(latest: tune.Checkpoint) -> None:
    """Every checkpoint of the trial whose latest is `latest` (an earlier run of the study may
    have left others beside it)."""
    fs, trial_dir = latest.filesystem, posixpath.dirname(latest.path.rstrip("/"))
    with contextlib.suppress(OSError):  # already gone is as good
        for info in fs.get_file_info(pafs.FileSelector(trial_dir)):
            if info.type == pafs.FileType.Directory and info.base_name.startswith(
                    "checkpoint_"):
                fs.delete_dir(info.path)


def _shown(path: str) -> str:
    """A file's path as the user best reads it: relative to where hpo runs, when below it."""
    with contextlib.suppress(ValueError):
        return str(Path(path).relative_to(Path.cwd()))
    return path


def _config(trial) -> dict[str, Any]:
    return {k: v for k, v in trial.config.items() if k != "trial"}


def _uri(checkpoint: tune.Checkpoint) -> str:
    kind = checkpoint.filesystem.type_name
    return checkpoint.path if kind == "local" else f"{kind}://{checkpoint.path}"

