"""A run of a study on Ray Tune: Ray up, one Tune experiment fed by the study's record, Ray
down. The only module (with the rest of hpo.tuning) that imports Ray.

Every run of a study (the first, a resume after a crash or Ctrl-C, an extension to more
trials) is the same: start one Tune experiment that first continues the trials the record
says are unfinished and then runs the trials the study still lacks, while the callback keeps
the views, best.pt and the live view current.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import ray
from ray import tune
from ray.tune.search import ConcurrencyLimiter
from rich.console import Console

from hpo import compat, views
from hpo.data import Dataset
from hpo.errors import SpaceInfeasible, StudyFault
from hpo.importance import importances
from hpo.live import Progress
from hpo.plan import Plan
from hpo.provenance import now, versions
from hpo.record import DUPLICATE, IMPORTANCES, REJECTED, RUNS, WARM, Record
from hpo.selection import pending
from hpo.status import Status
from hpo.tuning.callbacks import StudyCallback
from hpo.tuning.cluster import await_fit, join_cluster
from hpo.tuning.placement import feasibility, probe, trial_resources
from hpo.tuning.reruns import run_reruns
from hpo.tuning.scheduler import Rungs
from hpo.tuning.searcher import MAX_DUPLICATES_IN_A_ROW, StudySearcher
from hpo.tuning.trackers import tracker_callbacks
from hpo.tuning.trainable import train_trial
from hpo.weights import WEIGHTS_ENV

EXPERIMENT = "ray"  # Tune's experiment folder in the study folder; trials in ray/trial-<n>


def run_search(plan: Plan, record: Record, data: Dataset, console: Console,
               run: dict[str, Any], data_s: float = 0.0,
               trainable: Callable | None = None) -> Path:
    """Run the study `plan` describes on `data`, continuing its `record`, and return its
    folder; `console` shows its progress.

    The caller holds the study's lock (hpo.lock.StudyLock), has made the record whole and
    sends what Ray prints to ray.log (hpo.capture.output_to); `run` is what the record
    keeps of this run (hpo.study.run_entry), completed here; `data_s` is how long loading
    `data` took, for the study's time breakdown. `trainable` is what each trial runs
    (default: hpo.tuning.trainable.train_trial; it takes the config, then data, metric,
    mode, rungs, checkpoint_every and resume as keywords). Finished trials are never trained
    again; unfinished ones continue from their last checkpoint; TPE and ASHA continue from the
    whole record. Raises KeyboardInterrupt after Ctrl-C or SIGTERM, StudyFault after a fault
    (the record unreachable, a full disk), each once everything is saved; SpaceInfeasible when
    the space's draws are almost all infeasible.
    """
    space, options, folder = plan.space, plan.options, plan.folder
    # the record's word on a storage that stops answering goes where the user looks
    record.notify = lambda line: console.print(line, markup=False, highlight=False)
    t_ray = time.time()
    _connect(options)
    t_ray = time.time() - t_ray
    try:
        if options.address:  # before the run is recorded: one that never starts is none
            await_fit(options.cpus_per_trial, options.gpus_per_trial or 0, options.node_wait,
                      lambda line: console.print(line, markup=False, highlight=False))
        if all(t.kind == WARM for t in record.trials.values()):  # nothing drawn yet
            for name in space.starting_points:  # first: every study has to beat them
                space.enqueue(record.study, space.point(name))
        unfinished, ended = len(record.unfinished()), len(record.ended())
        budget = max(0, space.trials - ended - unfinished)
        runs = [*record.meta.get(RUNS, []), run]
        record.set_meta(RUNS, runs)
        if plan.resumed:
            console.print(f"resuming {folder.path}: {ended} trials finished, {unfinished} to "
                          f"continue, {budget} to start")
        t0 = time.time()
        searcher, callback = _run(plan, record, data, budget, console, t_ray,
                                  trainable or train_trial)
        t1 = time.time()
    finally:
        ray.shutdown()
    busy = busy_fraction(callback.intervals, t0, t1)
    run.update(ended=now(), stopped_by=searcher.stopped_by or None, wall_s=round(t1 - t0, 1),
               busy_fraction=round(busy, 4), fingerprint=data.fingerprint,
               time={"data_s": round(data_s, 2), **callback.time_spent(t0, t1, busy)},
               rejected=searcher.rejected, duplicates=searcher.duplicates,
               versions=versions())
    try:
        record.set_meta(RUNS, runs)
        _keep_importances(record, space)
        views.rebuild(folder, record)
    except StudyFault as exc:
        searcher.fault(exc)
    except OSError as exc:
        searcher.fault(StudyFault(f"{exc.filename or folder.path}: cannot write "
                                  f"({exc.strerror})"))
    _summarise(console, folder.path, record, space, busy, t1 - t0, run, searcher)
    if searcher.error:
        raise StudyFault(f"{searcher.error}; everything up to then is kept in the record; "
                         f"once that is mended, continue with: {_command_line()}")
    if searcher.interrupted and not searcher.infeasible:
        console.print(f"[yellow]stopped by {searcher.stopped_by}[/]: everything so far is "
                      f"kept; continue with\n  {_command_line()}")
    if searcher.infeasible:
        raise SpaceInfeasible(searcher.infeasible)
    if searcher.stopped_by in ("Ctrl-C", "SIGTERM"):
        raise KeyboardInterrupt
    return folder.path


def _keep_importances(record: Record, space) -> None:
    """What mattered so far, kept in the record: `hpo leaderboard` orders its columns by it."""
    try:
        found = importances(record, space.metric, space.mode)
    except (ValueError, RuntimeError):  # fANOVA on too uniform a history: nothing to tell
        return
    if found.values:
        record.set_meta(IMPORTANCES, found.values)


def busy_fraction(intervals: list[tuple[float, float]], start: float, end: float) -> float:
    """Share of [start, end] covered by at least one interval (trials training or evaluating)."""
    covered, reach = 0.0, start
    for a, b in sorted(intervals):
        a, b = max(a, reach), min(b, end)
        if b > a:
            covered += b - a
            reach = b
    return covered / max(1e-9, end - start)


def _connect(options) -> None:
    """Join the cluster at --address, or start a Ray of our own on this machine."""
    compat.quiet_tune()
    if options.address:
        # a shared --weights-dir reaches the trials on every node, not only this one's
        join_cluster(options.address, {k: os.environ[k] for k in (WEIGHTS_ENV,)
                                       if os.environ.get(k)})
    else:
        # "local": a new Ray of our own, even where `ray start` left one running
        ray.init(address="local", num_cpus=options.num_cpus, include_dashboard=False,
                 log_to_driver=False)


def _run(plan: Plan, record: Record, data: Dataset, budget: int, console: Console,
         t_ray: float, trainable: Callable):
    space, options, folder = plan.space, plan.options, plan.folder
    machines = {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}
    if len(machines) > 1 and not options.storage_path:
        console.print("[yellow]warning[/]: this cluster spans several machines; trials on "
                      "machines other than this one cannot write to the study folder here. "
                      "Pass --storage-path with a shared path or s3://bucket/prefix.")
    cluster = ray.cluster_resources()
    packer = (probe(space, data, options, console)
              if cluster.get("GPU") and options.gpus_per_trial is None else None)
    resources, slots = trial_resources(options, cluster, console, packer, folder.name)
    concurrency = max(1, int(options.concurrency or space.concurrency or slots))
    searcher = StudySearcher(space, record, budget,
                             feasibility(data, packer, cluster, concurrency))
    progress = Progress(console, folder.name, space.trials, space.metric, space.mode,
                        max_epochs=space.max_epochs, rungs=space.rungs(),
                        reduction_factor=space.reduction_factor, concurrency=concurrency,
                        epoch_budget=options.epoch_budget, time_budget=options.time_budget)
    callback = StudyCallback(folder, record, searcher, progress, packer, ray_start_s=t_ray,
                             keep_checkpoints=options.keep_checkpoints)
    history = {t.number: {e["epoch"]: e.get(space.metric) for e in t.epochs}
               for t in record.real()}
    scheduler = Rungs(space.metric, space.mode, space.rungs(), space.reduction_factor,
                      history)
    resume = {t.number: t.checkpoint for t in record.unfinished() if t.checkpoint}
    wrapped = tune.with_resources(tune.with_parameters(
        trainable, data=data.without_test(), metric=space.metric, mode=space.mode,
        rungs=tuple(scheduler.rungs), checkpoint_every=options.checkpoint_every,
        resume=resume), resources)
    stop = _Stop(searcher, callback, options.epoch_budget, options.time_budget)
    samples = len(record.unfinished()) + budget
    with _interruptible(searcher):
        if samples:
            tuner = new_tuner(space, options, folder.path, wrapped, searcher, callback,
                              scheduler, concurrency, samples, stop)
            with progress:
                tuner.fit()
        _end_lost(searcher, callback, record, space)
        callback.refresh(force=True)
        todo = pending(record, space.metric, space.mode, options.select, options.select_seeds)
        if todo and not (searcher.interrupted or searcher.error or record.unfinished()
                         or len(record.ended()) < space.trials):
            run_reruns(todo, record, folder, space, options, data, console, trainable,
                       resources, concurrency, stop, _Quiet())
            callback.refresh(force=True)
    return searcher, callback


def _end_lost(searcher: StudySearcher, callback: StudyCallback, record: Record,
              space) -> None:
    """The trials this run started that Tune ended without a word: those a stop cut short
    stay unfinished, to be continued; any other is lost."""
    for number in searcher.running().values():
        try:
            if searcher.interrupted:
                callback.interrupted(number)  # Tune ends them without a word: they go on later
            elif record.trials[number].status == Status.RUNNING:
                record.end(number, Status.FAILED, "lost: Ray lost track of it", space.metric,
                           space.mode)
        except StudyFault as exc:  # unrecorded, it stays unfinished: continued next run
            searcher.fault(exc)


def new_tuner(space, options, study: Path, trainable, searcher: StudySearcher,
              callback: StudyCallback, scheduler: Rungs, concurrency: int,
              samples: int, stop: tune.Stopper) -> tune.Tuner:
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
            stop=stop, failure_config=tune.FailureConfig(max_failures=2),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))


def _trial_name(trial) -> str:
    return f"trial-{trial.config['trial']:04d}"


class _Quiet(tune.ProgressReporter):
    """Tune's progress reports, none: the live view (hpo.live) shows the search. Tune's
    own pick in Jupyter would clear the cell's output, the live view with it."""

    def should_report(self, trials, done: bool = False) -> bool:
        return False

    def report(self, trials, done: bool, *sys_info: str) -> None:
        pass


class _Stop(compat.DriverOnly, tune.Stopper):
    """Ends the Tune run once the searcher is stopped (Ctrl-C, SIGTERM, a fault, a budget of
    this run spent: `epochs` trained in all, or `seconds` of wall time) or gives up."""

    driver_only = ("searcher", "callback")

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


def _summarise(console: Console, study: Path, record: Record, space, busy: float, wall: float,
               run: dict[str, Any], searcher: StudySearcher):
    trials = record.real()
    counts = Counter(str(t.status) for t in trials)
    best = record.best(space.metric, space.mode)
    spent = run["time"]
    console.print(f"[bold]{study}[/]: {len(trials)} trials in {wall:.0f} s · "
                  + " · ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    console.print(f"draws not run: {searcher.rejected} rejected before they became trials "
                  f"(cannot be built or would not fit), {searcher.duplicates} duplicates of "
                  f"trials already run ({record.count(REJECTED)} and "
                  f"{record.count(DUPLICATE)} in the whole study)")
    if searcher.exhausted:
        console.print(f"the space is exhausted: {MAX_DUPLICATES_IN_A_ROW} draws in a row "
                      "repeated configs already run, so the search ended early")
    if best:
        point = best.config.get("point")
        console.print(f"best {space.metric} {best.best(space.metric, space.mode)[0]:.4f} "
                      f"(trial {best.number}{', ' + point if point else ''}) → "
                      f"{study / 'best.json'}")
    console.print(f"trials computed {busy:.0%} of the wall time (busy %)")
    console.print(f"time: data {spent['data_s']:.1f} s before the search; no trial computing "
                  f"{spent['idle_s']:.0f} s of {wall:.0f} s (starting Ray "
                  f"{spent['ray_start_s']:.0f} s); in trial-seconds: training "
                  f"{spent['train_s']:.0f}, evaluation {spent['eval_s']:.0f}, start-up and "
                  f"reporting {spent['trial_other_s']:.0f}")
