"""The driver's view of the trials as Tune runs them: leaderboard, best weights, progress,
timings, memory seen, and each trial's checkpoints from its first to its end."""

from __future__ import annotations

import contextlib
import posixpath
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
from ray import tune

from hpo.files import write_json
from hpo.leaderboard import Leaderboard
from hpo.packing import Packer
from hpo.progress import Progress
from hpo.tuning.trainable import best_weights


class StudyCallback(tune.Callback):
    """Driver-side observer: feeds the leaderboard and the progress view, tells the searcher
    where each trial's latest checkpoint is, keeps best.pt and best.json on the best finished
    trial, and deletes a trial's checkpoints when it ends (unless `keep_checkpoints`)."""

    def __init__(self, board: Leaderboard, progress: Progress | None, searcher=None,
                 packer: Packer | None = None, ray_start_s: float = 0.0,
                 keep_checkpoints: bool = False):
        self.board, self.progress, self.packer = board, progress, packer
        self.searcher = searcher  # StudySearcher: the record of checkpoints, the interrupt flag
        self.ray_start_s = ray_start_s  # starting or joining Ray, before any trial
        self.keep_checkpoints = keep_checkpoints
        # wall-clock spans trials computed (an epoch: training, then evaluation), seconds of
        # them spent training, and trials' whole lives as the driver saw them
        self.intervals: list[tuple[float, float]] = []
        self.train_s = self.lives_s = 0.0
        self.epochs = 0  # epochs trained in this run, by all trials
        self._began: dict[str, float] = {}
        self._checkpoints: dict[str, tune.Checkpoint] = {}  # latest, by leaderboard id
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
        state.update(progress=None, searcher=None)
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
        tid = _row_id(trial)
        self.board.start(tid, _config(trial))
        self._began[tid] = time.time()
        if self.progress:
            self.progress.trial_started(tid, trial.config.get("point", ""),
                                        trial.config.get("epochs"))
        self._refresh(force=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        tid = _row_id(trial)
        self.board.result(tid, result)
        self.epochs += result.get("epoch", 0) > 0
        if self.progress:
            self.progress.trial_result(tid, result)
        if "t_start" in result:
            self.intervals.append((result["t_start"], result["t_end"]))
            self.train_s += result["train_seconds"]
        if self.packer and result.get("gpu_peak"):
            self.packer.observe(_config(trial), result["gpu_peak"])
        self._refresh()

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        self._checkpoints[_row_id(trial)] = checkpoint
        if self.searcher is not None:
            self.searcher.note_checkpoint(trial.trial_id, _uri(checkpoint))

    def on_trial_complete(self, iteration, trials, trial, **info):
        tid = _row_id(trial)
        self.board.finish(tid)
        self._ended(tid)
        self._lived(tid)
        self._refresh(force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        tid = _row_id(trial)
        if self.searcher is not None and self.searcher.interrupted:
            # it crashed as the search was being stopped: it goes on in the next run
            self.interrupted(tid)
        else:
            self.board.finish(tid, "failed", _last_error_line(trial))
            self._ended(tid)
        self._lived(tid, _error_log(trial))
        self._refresh(force=True)

    def on_trial_recover(self, iteration, trials, trial, **info):
        if self.progress:
            self.progress.trial_retried(_row_id(trial), _last_error_line(trial),
                                        _error_log(trial), trial.run_metadata.num_failures,
                                        trial.max_failures)

    def on_step_end(self, iteration, trials, **info):
        self._refresh()

    def interrupted(self, tid: str) -> None:
        """The search was stopped while trial `tid` ran: its row says so, and its checkpoint
        stays where it is, for the next run to continue from."""
        self.board.finish(tid, "interrupted", f"{self.searcher.stopped_by} stopped the search; "
                          "the same command continues this trial from its last checkpoint")
        self._checkpoints.pop(tid, None)

    def _ended(self, tid: str) -> None:
        """A trial is over: if it is the best finished trial, its best epoch's weights become
        best.pt (and its config best.json); then its checkpoints go."""
        checkpoint = self._checkpoints.pop(tid, None)
        best = self.board.best()
        study = self.board.path.parent
        if best and best["trial_id"] == tid and checkpoint is not None:
            best_weights(checkpoint, study / "best.pt")
            write_json(study / "best.json", best["config"])
        if checkpoint is not None and not self.keep_checkpoints:
            _delete_checkpoints(checkpoint)

    def _lived(self, tid: str, log: str | None = None) -> None:
        began = self._began.pop(tid, None)
        if began is not None:
            self.lives_s += time.time() - began
        if self.progress:
            row = self.board.rows[tid]
            self.progress.trial_ended(tid, row["status"], row.get("reason") or "", log)


def _delete_checkpoints(latest: tune.Checkpoint) -> None:
    """Every checkpoint of the trial whose latest is `latest` (an earlier run of the study may
    have left others beside it)."""
    fs, trial_dir = latest.filesystem, posixpath.dirname(latest.path.rstrip("/"))
    with contextlib.suppress(OSError):  # already gone is as good
        for info in fs.get_file_info(pafs.FileSelector(trial_dir)):
            if info.type == pafs.FileType.Directory and info.base_name.startswith(
                    "checkpoint_"):
                fs.delete_dir(info.path)


def _row_id(trial) -> str:
    """The leaderboard's id of a Tune trial: its trial number in the study's Optuna record."""
    return str(trial.config["trial"])


def _config(trial) -> dict[str, Any]:
    return {k: v for k, v in trial.config.items() if k != "trial"}


def _uri(checkpoint: tune.Checkpoint) -> str:
    kind = checkpoint.filesystem.type_name
    return checkpoint.path if kind == "local" else f"{kind}://{checkpoint.path}"


def _error_log(trial) -> str:
    """Where the whole of a trial's errors (Tune's error.txt, every attempt's traceback) is
    kept: in its folder of the study (ray/trial-<n>/), or of --storage-path."""
    path = posixpath.join(trial.path, trial.run_metadata.error_filename or "error.txt")
    kind = trial.storage.storage_filesystem.type_name
    if kind != "local":
        return f"{kind}://{path}"
    with contextlib.suppress(ValueError):
        return str(Path(path).relative_to(Path.cwd()))
    return path


def _last_error_line(trial) -> str:
    try:
        lines = Path(trial.error_file).read_text().strip().splitlines()
        return lines[-1][:300] if lines else "error"
    except (OSError, TypeError):
        return "error (no error file)"
