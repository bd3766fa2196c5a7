"""A study from start to end: Ray up, Tune experiments run or restored, results written."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import ray
from optuna.trial import TrialState
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter
from rich.console import Console

from hpo.leaderboard import Leaderboard, write_json
from hpo.progress import Progress, output_to
from hpo.search.observer import StudyCallback
from hpo.search.options import SearchOptions, prepare
from hpo.search.placement import probe, trial_resources
from hpo.search.searcher import HpoSearch, storage
from hpo.search.trainable import train_trial
from hpo.space import Space
from hpo.study import busy_fraction, now, read_meta, versions, write_meta


def run_search(space: Space, options: SearchOptions, console: Console | None = None) -> Path:
    """Run a study, or resume the one in its folder, and return the folder, results/<study>/.

    The same command run again after a crash, a kill or Ctrl-C continues the study: finished
    trials are kept, unfinished ones run again, the searcher keeps its history.
    Raises KeyboardInterrupt after Ctrl-C, once everything is saved.

    Example:
        >>> study = run_search(load_space("spaces/cifar10.py"), SearchOptions(data="data/cifar10"))
        >>> read_leaderboard(study).head()
    """
    t_load = time.time()
    space, data, study = prepare(space, options)
    t_load = time.time() - t_load
    study.mkdir(parents=True, exist_ok=True)
    meta = read_meta(study)
    if meta.get("finished") and meta.get("trials", 0) >= space.trials:
        (console or Console()).print(f"{study}: this study is complete "
                                     "(--fresh starts a new one; --trials N extends it)")
        return study
    resumed = bool(meta)
    shutil.copyfile(space.path, study / "space.py")
    meta.update(space=str(space.path), data=options.data or space.data,
                fingerprint=data.fingerprint, options=_jsonable(dataclasses.asdict(options)),
                trials=space.trials, versions=versions(), finished=None)
    meta.setdefault("started", now())
    meta["runs"] = meta.get("runs", 0) + 1
    write_meta(study, meta)
    board = Leaderboard.load(study / "leaderboard.csv", space.metric, space.mode,
                             space.objectives[1:])
    board.write()
    with output_to(study / "ray.log") as terminal:
        console = console or terminal
        if resumed:
            console.print(f"resuming {study}: {len(board.rows)} trials so far")
        t0 = time.time()
        callback, interrupted = _run_tuner(space, options, data, study, board, meta, console)
        t1 = time.time()
        busy = busy_fraction(callback.intervals, t0, t1)
        meta.update(wall_s=round(meta.get("wall_s", 0) + t1 - t0, 1), busy_fraction=round(busy, 4))
        meta["time"] = {"data_s": round(t_load, 2), **callback.time_spent(t0, t1, busy)}
        best = board.best()
        if best:
            write_json(study / "best.json", best["config"])
            meta["best"] = {"trial_id": best["trial_id"], space.metric: best[space.metric]}
        if not interrupted:
            meta["finished"] = now()
        write_meta(study, meta)
        _summarise(console, study, board, busy, t1 - t0, meta["time"])
        if interrupted:
            console.print(f"[yellow]interrupted[/]: everything so far is kept; resume with\n"
                          f"  {_command_line()}")
    if interrupted:
        raise KeyboardInterrupt
    return study


def _command_line() -> str:
    args = [a for a in sys.argv[1:] if a != "--fresh"]
    return " ".join(["hpo", *args])


def _run_tuner(space, options, data, study, board, meta,
               console) -> tuple[StudyCallback, bool]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # A trial checkpoints when its metric improves, which forces Tune's experiment snapshots;
    # they are small and local, so the warning about them is noise in ray.log.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Snapshot Tune's experiment state at every step, not every 10 s or more: a trial started
    # after the last snapshot is unknown to a resumed run. (A 12-trial study took the same
    # wall time either way: 18.8 s vs 18.4 s on 2 CPUs.)
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    t_ray = time.time()
    if options.address:
        ray.init(address=options.address, log_to_driver=False)
    else:
        ray.init(num_cpus=options.num_cpus, include_dashboard=False, log_to_driver=False)
    t_ray = time.time() - t_ray
    try:
        machines = {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}
        if len(machines) > 1 and not options.storage_path:
            console.print("[yellow]warning[/]: this cluster spans several machines; trials on "
                          "machines other than this one cannot write to the study folder here. "
                          "Pass --storage-path with a shared path or s3://bucket/prefix.")
        cluster = ray.cluster_resources()
        packer = (probe(space, data, options, console)
                  if cluster.get("GPU") and options.gpus_per_trial is None else None)
        resources, slots = trial_resources(options, cluster, console, packer, study.name)
        progress = Progress(console, study.name, space.trials, space.metric, space.mode,
                            max_epochs=space.max_epochs, rungs=space.rungs(),
                            reduction_factor=space.reduction_factor)
        callback = StudyCallback(board, progress, packer=packer, ray_start_s=t_ray)
        interrupted = False
        with progress:
            # one Tune experiment per stretch of trials: the one an interrupted run left is
            # restored; a finished study given more --trials continues in a new experiment,
            # fed by the same Optuna study and leaderboard
            while not interrupted:
                tuner, experiment = _next_tuner(space, options, data, study, board, meta,
                                                resources, slots, callback, console)
                if tuner is None:
                    break
                handler = signal.getsignal(signal.SIGINT)
                results = tuner.fit()
                # Tune swaps in its own SIGINT handler for the run and puts ours back only
                # when a Ctrl-C stopped it: that is how an interrupted run is told apart
                interrupted = signal.getsignal(signal.SIGINT) is handler and not int(
                    os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0"))
                signal.signal(signal.SIGINT, handler)
                if not interrupted:
                    meta["experiments"][experiment] = "finished"
                    write_meta(study, meta)
                    _close_stragglers(board, options, study)
                board.write()
                _copy_best_weights(results, board, study)
        return callback, interrupted
    finally:
        ray.shutdown()


def _next_tuner(space, options, data, study, board, meta, resources, slots, callback,
                console) -> tuple[tune.Tuner | None, str]:
    """The Tune experiment to run next: the unfinished one restored, else a new one for the
    trials the study still lacks, else (None, "") when it has them all."""
    experiments = meta.setdefault("experiments", {})  # name -> "running" | "finished"
    finished = board.finished_results()
    callback.replayed = frozenset(finished)
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, data=data.without_test(), metric=space.metric,
                             mode=space.mode, finished=finished), resources)
    running = [name for name, state in experiments.items() if state == "running"]
    if running and tune.Tuner.can_restore(_experiment_path(options, study, running[-1])):
        path = _experiment_path(options, study, running[-1])
        _requeue_lost(board, space, options, study, path, console)
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True,
                                   resume_errored=True)
        # the restored run config holds the callback pickled at the first run, without
        # its terminal view or the leaderboard as it is now
        tuner._local_tuner.get_run_config().callbacks = [callback]
        return tuner, running[-1]
    for name in running:  # started, but killed before Tune saved anything
        experiments[name] = "finished"
    remaining = space.trials - len(board.rows)
    if remaining <= 0:
        return None, ""
    base = study.name if options.storage_path else "ray"
    name = base if not experiments else f"{base}-{len(experiments) + 1}"
    experiments[name] = "running"
    write_meta(study, meta)
    if len(experiments) > 1:
        console.print(f"{len(board.rows)} trials so far; {remaining} more")
    return new_tuner(space, options, study, trainable, callback, slots, remaining,
                     name, board), name


def _experiment_path(options: SearchOptions, study: Path, name: str) -> str:
    if options.storage_path:
        return f"{options.storage_path.rstrip('/')}/{name}"
    return str(study.resolve() / name)


def _requeue_lost(board, space, options, study, experiment, console) -> None:
    """Trials the leaderboard saw start but Tune's last snapshot predates: the resumed run
    would not know them. Their configs go back to Optuna's queue, to run under new ids."""
    known = {t.trial_id for t in tune.ExperimentAnalysis(experiment).trials}
    lost = [tid for tid, row in board.rows.items()
            if row["status"] == "running" and tid not in known]
    if not lost:
        return
    stored = optuna.load_study(study_name=study.name, storage=storage(options, study))
    for trial_id in lost:
        space.enqueue(stored, board.rows[trial_id]["config"])
        board.drop(trial_id)
    console.print(f"{len(lost)} trial(s) started just before the interruption are queued again")


def new_tuner(space, options, study, trainable, callback, slots, trials: int | None = None,
              name: str = "ray", board: Leaderboard | None = None) -> tune.Tuner:
    """A Tune experiment of `trials` trials (default: the space's) in results/<study>/<name>
    (or --storage-path/<name>); starting points not yet on `board` are enqueued first."""
    concurrency = max(1, int(options.concurrency or space.concurrency or slots))
    rows = board.rows.values() if board else ()
    # a study extended by a new experiment must not draw the first one's random configs again
    sampler = optuna.samplers.TPESampler(seed=options.seed + len(rows), constant_liar=True)
    multi = len(space.objectives) > 1
    searcher = HpoSearch(space=space.sample,
                         metric=[m for m, _ in space.objectives] if multi else space.metric,
                         mode=[d for _, d in space.objectives] if multi else space.mode,
                         sampler=sampler, storage=storage(options, study),
                         study_name=study.name)
    tried = {row["config"].get("point") for row in rows}
    for point in space.starting_points:
        if point not in tried:
            space.enqueue(searcher._ot_study, space.point(point))
    scheduler = ASHAScheduler(time_attr="epoch", max_t=space.max_epochs,
                              grace_period=space.grace_period,
                              reduction_factor=space.reduction_factor)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=concurrency),
            scheduler=scheduler, num_samples=trials or space.trials, metric=space.metric,
            mode=space.mode, reuse_actors=True),
        run_config=tune.RunConfig(
            # trial results and checkpoints: in the study folder, or where every node of
            # a cluster can reach them (a shared path, s3://, gs://); the leaderboard
            # and best config are written here by the driver either way
            name=name, storage_path=options.storage_path or str(study.resolve()), verbose=0,
            callbacks=[callback], failure_config=tune.FailureConfig(max_failures=2),
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=space.metric,
                checkpoint_score_order=space.mode)))


def _close_stragglers(board: Leaderboard, options: SearchOptions, study: Path) -> None:
    """After a finished search nothing may stay 'running': not a leaderboard row whose trial
    Ray lost track of (its driver was killed before Ray recorded it), nor its Optuna trial."""
    for trial_id, row in board.rows.items():
        if row["status"] == "running":
            board.finish(trial_id, "failed", "lost: its run was interrupted and not resumed")
    stored = optuna.load_study(study_name=study.name, storage=storage(options, study))
    for trial in stored.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        stored.tell(trial.number, state=TrialState.FAIL)


def _copy_best_weights(results, board: Leaderboard, study: Path) -> None:
    best = board.best()
    if not best:
        return
    for result in results:
        if result.metrics and result.metrics.get("trial_id") == best["trial_id"]:
            checkpoints = [c for c, _ in (result.best_checkpoints or [])] or [result.checkpoint]
            for checkpoint in checkpoints:
                if checkpoint is not None:
                    with checkpoint.as_directory() as folder:
                        shutil.copyfile(Path(folder) / "model.pt", study / "best.pt")
                    return


def _summarise(console: Console, study: Path, board: Leaderboard, busy: float, wall: float,
               spent: dict[str, float]):
    counts = Counter(r["status"] for r in board.rows.values())
    best = board.best()
    console.print(f"[bold]{study}[/]: {len(board.rows)} trials in {wall:.0f} s · "
                  + " · ".join(f"{v} {k}" for k, v in sorted(counts.items())))
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


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    return str(obj) if isinstance(obj, Path) else obj
