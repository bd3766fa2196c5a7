"""A study from start to end: Ray up, one Tune experiment fed by the study's record, results.

Every run of a study (the first, a resume after a crash or Ctrl-C, an extension to more
trials) is the same: read the Optuna record, start one Tune experiment that first continues the
trials the record says are unfinished and then runs the trials the study still lacks, and
keep the leaderboard, best.json and best.pt as trials end.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import ray
from ray import tune
from ray.tune.search import ConcurrencyLimiter
from rich.console import Console

from hpo.data import Dataset
from hpo.leaderboard import Leaderboard
from hpo.progress import Progress
from hpo.study import begin_study, busy_fraction, now, write_meta
from hpo.tuning.cluster import join_cluster
from hpo.tuning.observer import StudyCallback
from hpo.tuning.options import Plan, StudyError
from hpo.tuning.placement import feasibility, probe, trial_resources
from hpo.tuning.scheduler import Rungs
from hpo.tuning.searcher import (
    CONFIG,
    MAX_DUPLICATES_IN_A_ROW,
    REASON,
    STATUS,
    Record,
    SpaceInfeasible,
    StudySearcher,
    open_study,
)
from hpo.tuning.trackers import tracker_callbacks
from hpo.tuning.trainable import train_trial
from hpo.weights import WEIGHTS_ENV

EXPERIMENT = "ray"  # Tune's experiment folder in the study folder; trials in ray/trial-<n>


def run_search(plan: Plan, data: Dataset, console: Console, data_s: float = 0.0) -> Path:
    """Run the study `plan` describes on `data`, or continue it, and return its folder;
    `console` shows its progress.

    The caller holds the study's lock (hpo.lock.StudyLock) and sends what Ray prints to
    ray.log (hpo.progress.output_to); `data_s` is how long loading `data` took, for the
    study's time breakdown. Finished trials are never trained again;
    unfinished ones continue from their last checkpoint; TPE continues from the whole record;
    a complete study is left exactly as it is. Raises KeyboardInterrupt after Ctrl-C or
    SIGTERM, once everything is saved; SpaceInfeasible when the space's draws are almost all
    infeasible; StudyError when the study's files cannot be written.
    """
    space, options, study = plan.space, plan.options, plan.folder
    if plan.resumed and _complete(plan, console):
        return study
    t_ray = time.time()
    _connect(options)
    t_ray = time.time() - t_ray
    try:
        storage = optuna.storages.RDBStorage(_storage_url(plan))
        record_study = open_study(space, study.name, storage, options.seed)
        if not record_study.get_trials(deepcopy=False):
            for name in space.starting_points:  # first: every study has to beat them
                space.enqueue(record_study, space.point(name))
        record = Record.read(record_study)
        budget = max(0, space.trials - len(record.finished) - len(record.resumed))
        try:
            meta = begin_study(plan, data)
        except OSError as exc:
            raise StudyError(f"{exc.filename or study}: cannot write ({exc.strerror})"
                             ) from None
        board = Leaderboard.load(study / "leaderboard.csv", space.metric, space.mode,
                                 space.objectives[1:])
        board.reconcile(_ended(record, space.metric),
                        {str(r.number) for r in record.resumed})
        board.write()
        if plan.resumed:
            console.print(f"resuming {study}: {len(record.finished)} trials finished, "
                          f"{len(record.resumed)} to continue, {budget} to start")
        t0 = time.time()
        searcher, callback = _run(plan, data, record_study, storage, record, board,
                                  budget, console, t_ray)
        t1 = time.time()
    finally:
        ray.shutdown()
    busy = busy_fraction(callback.intervals, t0, t1)
    meta.update(wall_s=round(meta.get("wall_s", 0) + t1 - t0, 1),
                busy_fraction=round(busy, 4),
                rejected=record.rejected + searcher.rejected,
                duplicates=record.duplicates + searcher.duplicates)
    meta["time"] = {"data_s": round(data_s, 2), **callback.time_spent(t0, t1, busy)}
    best = board.best()
    if best:
        meta["best"] = {"trial_id": best["trial_id"], space.metric: best[space.metric]}
    stopped = searcher.interrupted or searcher.error
    meta["runs"][-1].update(ended=now(), stopped_by=searcher.stopped_by or None)
    if not stopped:
        meta["finished"] = now()
    write_meta(study, meta)
    _summarise(console, study, board, busy, t1 - t0, meta, searcher)
    if searcher.interrupted and not searcher.error:
        console.print(f"[yellow]stopped by {searcher.stopped_by}[/]: everything so far is "
                      f"kept; continue with\n  {_command_line()}")
    if searcher.error:
        raise SpaceInfeasible(searcher.error)
    if searcher.stopped_by in ("Ctrl-C", "SIGTERM"):
        raise KeyboardInterrupt
    return study


def _complete(plan: Plan, console: Console) -> bool:
    """Whether the record holds every trial the study asks for, with none to continue; then
    say so. Nothing is written: a complete study run again stays as it is."""
    storage = optuna.storages.RDBStorage(_storage_url(plan))
    record = Record.read(open_study(plan.space, plan.folder.name, storage, plan.options.seed))
    if record.resumed or len(record.finished) < plan.space.trials:
        return False
    console.print(f"{plan.folder}: this study is complete ({len(record.finished)} trials; "
                  "--trials N extends it, --fresh starts a new one)")
    return True


def _connect(options) -> None:
    """Join the cluster at --address, or start a Ray of our own on this machine."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # ours decides, see _interruptible
    # Tune's older output engine, the one that takes our reporter (_Quiet): the newer one
    # prints a "Configuration for experiment" box and a TensorBoard hint into /tmp/ray
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    if options.address:
        # a shared --weights-dir reaches the trials on every node, not only this one's
        join_cluster(options.address, {k: os.environ[k] for k in (WEIGHTS_ENV,)
                                       if os.environ.get(k)})
    else:
        # "local": a new Ray of our own, even where `ray start` left one running
        ray.init(address="local", num_cpus=options.num_cpus, include_dashboard=False,
                 log_to_driver=False)


def _storage_url(plan: Plan) -> str:
    return plan.options.storage or f"sqlite:///{plan.folder.resolve()}/study.db"


def _ended(record: Record, metric: str) -> dict[str, dict[str, Any]]:
    """What the record says of each trial that ended, as Leaderboard.reconcile takes it."""
    ended = {}
    for t in record.finished:
        values = t.intermediate_values
        ended[str(t.number)] = {
            "config": t.user_attrs[CONFIG], "status": t.user_attrs.get(STATUS, "failed"),
            "reason": t.user_attrs.get(REASON, ""), "epochs_trained": max(values, default=0),
            metric: t.values[0] if t.values else None}
    return ended


def _run(plan, data, record_study, storage, record, board, budget, console, t_ray):
    space, options, study = plan.space, plan.options, plan.folder
    machines = {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}
    if len(machines) > 1 and not options.storage_path:
        console.print("[yellow]warning[/]: this cluster spans several machines; trials on "
                      "machines other than this one cannot write to the study folder here. "
                      "Pass --storage-path with a shared path or s3://bucket/prefix.")
    cluster = ray.cluster_resources()
    packer = (probe(space, data, options, console)
              if cluster.get("GPU") and options.gpus_per_trial is None else None)
    resources, slots = trial_resources(options, cluster, console, packer, study.name)
    concurrency = max(1, int(options.concurrency or space.concurrency or slots))
    searcher = StudySearcher(space, record_study, storage, record, budget,
                             feasibility(data, packer, cluster, concurrency))
    progress = Progress(console, study.name, space.trials, space.metric, space.mode,
                        max_epochs=space.max_epochs, rungs=space.rungs(),
                        reduction_factor=space.reduction_factor, concurrency=concurrency)
    callback = StudyCallback(board, progress, searcher, packer=packer, ray_start_s=t_ray,
                             keep_checkpoints=options.keep_checkpoints)
    history = {int(tid): {e: c.get(space.metric) for e, c in curve.items()}
               for tid, curve in board.curves.items() if tid.isdigit()}
    scheduler = Rungs(space.metric, space.mode, space.rungs(), space.reduction_factor,
                      history)
    resume = {r.number: r.checkpoint for r in record.resumed if r.checkpoint}
    trainable = tune.with_resources(tune.with_parameters(
        train_trial, data=data.without_test(), metric=space.metric, mode=space.mode,
        rungs=tuple(scheduler.rungs), checkpoint_every=options.checkpoint_every,
        resume=resume), resources)
    tuner = new_tuner(space, options, study, trainable, searcher, callback, scheduler,
                      concurrency, len(record.resumed) + budget)
    with progress, _interruptible(searcher):
        tuner.fit()
    for tid in [t for t, row in board.rows.items() if row["status"] == "running"]:
        if searcher.interrupted or searcher.error:
            callback.interrupted(tid)  # Tune ends them without a callback: they go on later
        else:
            board.finish(tid, "failed", "lost: Ray lost track of it")
    board.write()
    return searcher, callback


def new_tuner(space, options, study: Path, trainable, searcher: StudySearcher,
              callback: StudyCallback, scheduler: Rungs, concurrency: int,
              samples: int) -> tune.Tuner:
    """The Tune experiment of one run of a study: `samples` trials from `searcher`, at most
    `concurrency` at once, stopped by `scheduler`, watched by `callback` and logged to the
    trackers of --log, in <study>/ray/trial-<n> (or <--storage-path>/<study>/trial-<n>)."""
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=concurrency),
            scheduler=scheduler, num_samples=samples, metric=space.metric, mode=space.mode,
            reuse_actors=True, trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name),
        run_config=tune.RunConfig(
            # trial results and checkpoints: in the study folder, or where every node of a
            # cluster can reach them (a shared path, s3://, gs://); the leaderboard and best
            # config are written here by the driver either way
            name=study.name if options.storage_path else EXPERIMENT,
            storage_path=options.storage_path or str(study.resolve()), verbose=0,
            progress_reporter=_Quiet(),
            callbacks=[callback, *tracker_callbacks(options.log, study,
                                                    options.wandb_project)],
            stop=_Stop(searcher, callback, options.epoch_budget, options.time_budget),
            failure_config=tune.FailureConfig(max_failures=2),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))


def _trial_name(trial) -> str:
    return f"trial-{trial.config['trial']:04d}"


class _Quiet(tune.ProgressReporter):
    """Tune's progress reports, none: the live view (hpo.progress) shows the search. Tune's
    own pick in Jupyter would clear the cell's output, the live view with it."""

    def should_report(self, trials, done: bool = False) -> bool:
        return False

    def report(self, trials, done: bool, *sys_info: str) -> None:
        pass


class _Stop(tune.Stopper):
    """Ends the Tune run once the searcher is stopped (Ctrl-C, SIGTERM, a budget of this run
    spent: `epochs` trained in all, or `seconds` of wall time) or gives up."""

    def __init__(self, searcher: StudySearcher, callback: StudyCallback,
                 epochs: int | None = None, seconds: float | None = None):
        self.searcher, self.callback = searcher, callback
        self.epochs, self.seconds, self.t0 = epochs, seconds, time.time()

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        s = self.searcher
        if s is None:
            return False
        if self.epochs and self.callback.epochs >= self.epochs:
            s.stop(f"the epoch budget ({self.epochs} epochs)")
        if self.seconds and time.time() - self.t0 >= self.seconds:
            s.stop(f"the time budget ({self.seconds / 60:g} min)")
        return s.interrupted or bool(s.error)

    def __getstate__(self):
        return {"searcher": None}  # Tune pickles its run config; the flag lives here only


@contextmanager
def _interruptible(searcher: StudySearcher):
    """While the block runs, Ctrl-C (SIGINT) and SIGTERM (Slurm's time limit, `kill`) ask the
    search to stop: running trials stay unfinished in the record, to be continued. A second
    Ctrl-C stops at once."""
    def ask_to_stop(signum, frame):
        if searcher.interrupted and searcher.stopped_by in ("Ctrl-C", "SIGTERM"):
            raise KeyboardInterrupt
        searcher.stop("Ctrl-C" if signum == signal.SIGINT else "SIGTERM")

    saved = {s: signal.signal(s, ask_to_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def _command_line() -> str:
    if Path(sys.argv[0]).stem not in ("hpo", "cli"):  # hpo.search, in a notebook or script
        return "the same hpo.search(...) call (without fresh=True)"
    args = [a for a in sys.argv[1:] if a != "--fresh"]
    return " ".join(["hpo", *args])


def _summarise(console: Console, study: Path, board: Leaderboard, busy: float, wall: float,
               meta: dict[str, Any], searcher: StudySearcher):
    counts = Counter(r["status"] for r in board.rows.values())
    best = board.best()
    spent = meta["time"]
    console.print(f"[bold]{study}[/]: {len(board.rows)} trials in {wall:.0f} s · "
                  + " · ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    console.print(f"draws not run: {searcher.rejected} rejected before they became trials "
                  f"(cannot be built or would not fit), {searcher.duplicates} duplicates of "
                  f"trials already run ({meta['rejected']} and {meta['duplicates']} in the "
                  "whole study)")
    if searcher.exhausted:
        console.print(f"the space is exhausted: {MAX_DUPLICATES_IN_A_ROW} draws in a row "
                      "repeated configs already run, so the search ended early")
    if best:
        console.print(f"best {board.metric} {best[board.metric]:.4f} (trial {best['trial_id']}"
                      f"{', ' + best['config']['point'] if best['config'].get('point') else ''})"
                      f" → {study / 'best.json'}")
    console.print(f"trials computed {busy:.0%} of the wall time (busy %)")
    console.print(f"time: data {spent['data_s']:.1f} s before the search; no trial computing "
                  f"{spent['idle_s']:.0f} s of {wall:.0f} s (starting Ray "
                  f"{spent['ray_start_s']:.0f} s); in trial-seconds: training "
                  f"{spent['train_s']:.0f}, evaluation {spent['eval_s']:.0f}, start-up and "
                  f"reporting {spent['trial_other_s']:.0f}")
