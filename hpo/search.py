"""The search driver: the only module that imports Ray.

Optuna's TPE proposes configs (define-by-run over the space file), ASHA stops the weak ones
at its rungs, Ray Tune runs the trials, and a callback keeps the leaderboard and the progress
view current. The dataset is decoded once here and shipped to trials through Ray's object store.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import ray
import torch
from optuna.trial import TrialState
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch
from rich.console import Console

from hpo import train
from hpo.data import Dataset, decode_count, load_dataset
from hpo.leaderboard import Leaderboard, write_json
from hpo.model import Infeasible
from hpo.packing import CONTEXT_BYTES, Packer
from hpo.progress import Progress, output_to
from hpo.space import Space, random_configs
from hpo.study import (
    busy_fraction,
    check_resumable,
    choose_folder,
    now,
    read_meta,
    versions,
    write_meta,
)

TERMINAL = ("infeasible", "diverged", "oom")


class StudyError(ValueError):
    """Bad input found before a study starts (options, data); one line, naming the file."""


@dataclass
class SearchOptions:
    """What the command line may override or add to a space file."""

    data: str | None = None
    trials: int | None = None
    max_epochs: int | None = None
    grace_period: int | None = None
    name: str | None = None
    gpus_per_trial: float | None = None  # default: from each trial's measured memory
    trials_per_gpu: int = 4  # at most, when hpo picks the fractions
    cpus_per_trial: float = 1.0
    fraction: float = 1.0
    address: str | None = None  # None: start Ray on this machine
    fresh: bool = False  # a new study under a new name, instead of resuming results/<name>
    storage: str | None = None  # Optuna storage URL (default: SQLite in the study folder)
    storage_path: str | None = None  # Tune's trial storage every node reaches (path or URI)
    num_cpus: int | None = None  # CPUs of a local Ray (default: all)
    concurrency: int | None = None
    seed: int = 0
    results: Path = Path("results")


class HpoSearch(OptunaSearch):
    """OptunaSearch that tells Optuna the truth about each trial.

    Ray's OptunaSearch stores a trial that ASHA stopped after one epoch as COMPLETE with its
    one-epoch value, so TPE compares it with full-length trials. Here it is PRUNED with its
    per-epoch values as intermediate values; trials that could not train are FAIL; complete
    trials are told their best epoch's value, as the leaderboard ranks them.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._values: dict[str, dict[int, float]] = {}  # per trial: epoch -> metric
        # with two objectives, metric and mode are lists; the first ranks and ASHA stops on it
        self._multi = isinstance(self.metric, list)
        self._primary = (self.metric[0], self.mode[0]) if self._multi else (self.metric,
                                                                           self.mode)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        value, epoch = result.get(self._primary[0]), int(result.get("epoch", 0))
        if epoch > 0 and value is not None and math.isfinite(value):
            self._values.setdefault(trial_id, {})[epoch] = value
            if self._multi:
                return  # Optuna keeps no intermediate values for several objectives
            try:
                # a trial run again after a resume reports its epochs again: Optuna keeps the
                # first, or refuses when the trial finished after Tune's last snapshot
                self._ot_trials[trial_id].report(value, epoch)
            except (RuntimeError, ValueError):
                pass

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        result = result or {}
        # Tune hands the last result to on_trial_complete instead of on_trial_result
        self.on_trial_result(trial_id, result)
        values = list(self._values.pop(trial_id, {}).values())
        try:
            if error or result.get("status") in TERMINAL or not values:
                self._ot_study.tell(ot_trial, state=TrialState.FAIL)
            elif result.get("epoch", 0) < result.get("epochs", 0):
                self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
            else:
                best = max(values) if self._primary[1] == "max" else min(values)
                others = [result.get(m) for m in self.metric[1:]] if self._multi else []
                self._ot_study.tell(ot_trial, [best, *others] if self._multi else best)
        except (RuntimeError, ValueError):
            # told already: the trial finished after Tune's last snapshot and ran again
            pass
        self._completed_trials.add(trial_id)

    def save(self, checkpoint_path: str) -> None:
        # The space holds the user's `when=` lambdas, which pickle cannot store; the space
        # file is reloaded on restore anyway.
        space, self._space = self._space, None
        try:
            super().save(checkpoint_path)
        finally:
            self._space = space

    def restore(self, checkpoint_path: str) -> None:
        space = self._space
        super().restore(checkpoint_path)
        self._space = space


def _trainable(config: dict, data: Dataset, metric: str, mode: str,
               finished: dict[str, dict] | None = None) -> None:
    """Ray's side of a trial: run_trial with a report that forwards to Tune, and a checkpoint
    of the weights whenever the metric improves (Tune keeps the best one).

    `finished` holds the last result of trials a resumed study already finished: Tune's
    experiment snapshot can predate their end, and they must not train again, so such a
    trial only reports its result once more.
    """
    replay = (finished or {}).get(tune.get_context().get_trial_id())
    if replay is not None:
        tune.report(replay)
        return
    gpus = ray.get_runtime_context().get_assigned_resources().get("GPU", 0)
    if torch.cuda.is_available() and 0 < gpus < 1:
        # a trial that outgrows its share fails alone ("oom") instead of starving the
        # trials beside it on the GPU
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(max(0.05, gpus - CONTEXT_BYTES / total))
    # the IP names the machine; the node id tells apart two raylets on one machine
    node = f"{ray.util.get_node_ip_address()}/{ray.get_runtime_context().get_node_id()[:8]}"
    best = [None]

    def report(metrics: dict, model=None) -> None:
        metrics = {**metrics, "node": node, "data": data.fingerprint, "decoded": decode_count()}
        value = metrics.get(metric)
        if model is None or value is None or not math.isfinite(value) or (
            best[0] is not None and (value <= best[0] if mode == "max" else value >= best[0])
        ):
            tune.report(metrics)
            return
        best[0] = value
        # Tune copies the checkpoint to its storage before report returns
        with tempfile.TemporaryDirectory(prefix="hpo-ckpt-") as folder:
            torch.save(model.state_dict(), os.path.join(folder, "model.pt"))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    train.run_trial(config, data, report)


class _StudyCallback(tune.Callback):
    """Driver-side observer: feeds the leaderboard and the progress view."""

    def __init__(self, board: Leaderboard, progress: Progress | None,
                 replayed: frozenset[str] = frozenset(), packer: Packer | None = None):
        self.board, self.progress, self.packer = board, progress, packer
        self.replayed = replayed  # finished trials that a resume only replays: rows stay as is
        self.intervals: list[tuple[float, float]] = []  # wall-clock spans trials computed
        # where trial time went, in trial-seconds: training, evaluation, and a trial's whole
        # life seen from the driver (the rest of it: start-up, data to device, reporting)
        self.seconds: Counter[str] = Counter()
        self._began: dict[str, float] = {}
        self.ray_start_s = 0.0  # starting or joining Ray, before any trial
        self._last_write = 0.0

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
            self.progress.update(counts, best and (best[self.board.metric], best["trial_id"],
                                                   best["config"].get("point", "")))

    def on_trial_start(self, iteration, trials, trial, **info):
        if trial.trial_id in self.replayed:
            return
        self.board.start(trial.trial_id, trial.config)
        self._began[trial.trial_id] = time.time()
        self._refresh(force=True)

    def _ended(self, trial_id: str) -> None:
        began = self._began.pop(trial_id, None)
        if began is not None:
            self.seconds["trials"] += time.time() - began

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if trial.trial_id in self.replayed:
            return
        self.board.result(trial.trial_id, result)
        if "t_start" in result:
            self.intervals.append((result["t_start"], result["t_end"]))
            self.seconds["train"] += result["train_seconds"]
            self.seconds["eval"] += result["t_end"] - result["t_start"] - result["train_seconds"]
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


def prepare(space: Space, options: SearchOptions) -> tuple[Space, Dataset, Path]:
    """Apply the options to the space, load the data and choose the study folder, without
    creating anything under results/ (so bad input leaves nothing behind).

    Raises StudyError (DataError for the data) with one line naming the file at fault.
    """
    try:
        return _prepare(space, options)
    except ValueError as exc:
        raise StudyError(str(exc)) from None


def _prepare(space: Space, options: SearchOptions) -> tuple[Space, Dataset, Path]:
    if options.trials is not None:
        space = dataclasses.replace(space, trials=options.trials)
    if options.max_epochs is not None:
        space = dataclasses.replace(space, max_epochs=options.max_epochs,
                                    grace_period=min(space.grace_period, options.max_epochs))
    if options.grace_period is not None:
        if not 1 <= options.grace_period <= space.max_epochs:
            raise ValueError(f"--grace-period must be in 1..{space.max_epochs}")
        space = dataclasses.replace(space, grace_period=options.grace_period)
    if options.trials_per_gpu < 1:
        raise ValueError("--trials-per-gpu must be 1 or more")
    if options.gpus_per_trial is not None and options.gpus_per_trial <= 0:
        raise ValueError("--gpus-per-trial must be above 0")
    source = options.data or space.data
    if not source:
        raise ValueError(f"{space.path}: no data: pass --data or set `data` in the space file")
    data = load_dataset(source, val_fraction=space.val_fraction, seed=options.seed,
                        fraction=options.fraction, image_size=space.image_size,
                        channels=space.channels)
    folder = choose_folder(options.results, options.name or space.name, options.fresh)
    check_resumable(folder, space.source, data.fingerprint)
    return space, data, folder


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
        spent = callback.seconds
        meta["time"] = {  # of this run: the wall clock's and, summed over trials, theirs
            "data_s": round(t_load, 2), "search_s": round(t1 - t0, 2),
            "ray_start_s": round(callback.ray_start_s, 2),
            "idle_s": round((1 - busy) * (t1 - t0), 2),
            "train_s": round(spent["train"], 2), "eval_s": round(spent["eval"], 2),
            "trial_other_s": round(max(0.0, spent["trials"] - spent["train"] - spent["eval"]),
                                   2)}
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
               console) -> tuple[_StudyCallback, bool]:
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
        packer = (_probe(space, data, options, console)
                  if cluster.get("GPU") and options.gpus_per_trial is None else None)
        resources, slots = _trial_resources(options, cluster, console, packer, study.name)
        progress = Progress(console, study.name, space.trials, space.metric)
        callback = _StudyCallback(board, progress, packer=packer)
        callback.ray_start_s = t_ray
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
        tune.with_parameters(_trainable, data=data.without_test(), metric=space.metric,
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
    return _new_tuner(space, options, study, trainable, callback, slots, remaining,
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
    stored = optuna.load_study(study_name=study.name, storage=_storage(options, study))
    for trial_id in lost:
        config = board.rows[trial_id]["config"]
        if config.get("point") in space.starting_points:
            stored.enqueue_trial(space.point_params(config["point"]),
                                 user_attrs={"hpo_point": config["point"]})
        elif config:
            stored.enqueue_trial(space.params_of(config))
        board.drop(trial_id)
    console.print(f"{len(lost)} trial(s) started just before the interruption are queued again")


# the packer of the study this process is searching: Tune calls _packed_resources for every
# new trial, in this process, through the trainable it pickled (which names this module)
_PACKERS: dict[str, Packer] = {}


def _packed_resources(study: str, cpus: float, config: dict) -> tune.PlacementGroupFactory:
    return tune.PlacementGroupFactory([{"CPU": cpus, "GPU": _PACKERS[study].fraction(config)}])


def _trial_resources(options: SearchOptions, cluster: dict, console: Console,
                     packer: Packer | None = None, study: str = ""):
    """What each trial asks Ray for, and how many such trials fit the cluster as it is now.

    With GPUs and no --gpus-per-trial, `packer` gives each trial its own fraction of a GPU,
    from its predicted memory (a callable Tune calls per trial); without a packer, 0.25 GPU.
    CPUs only otherwise. An explicit --gpus-per-trial is asked for even when no GPU is up yet:
    on an autoscaling cluster the request is what makes the autoscaler add GPU nodes.
    """
    gpus, cpus = cluster.get("GPU", 0), cluster.get("CPU", 0)
    resources = {"cpu": options.cpus_per_trial}
    slots = int(cpus // options.cpus_per_trial)
    if packer is not None and gpus and options.gpus_per_trial is None:
        _PACKERS[study] = packer
        return (functools.partial(_packed_resources, study, options.cpus_per_trial),
                min(slots, int(gpus * packer.max_per_gpu)))
    per = options.gpus_per_trial if options.gpus_per_trial is not None else (0.25 if gpus else 0)
    if per:
        resources["gpu"] = per
        if gpus:
            slots = min(slots, int(gpus / per))
        else:
            console.print(f"no GPU in the cluster yet: trials ask for {per} GPU each, for the "
                          "autoscaler to add GPU nodes (set --concurrency for how many at once)")
    return resources, slots


def _probe(space: Space, data: Dataset, options: SearchOptions,
           console: Console) -> Packer | None:
    """Measure a few configs' peak memory on one whole GPU of the cluster (the starting points
    and four random draws) and return a Packer calibrated by them; None when no GPU answers
    within ten minutes or the node has no CUDA (then trials get 0.25 GPU each)."""
    configs = [space.point(n) for n in space.starting_points]
    configs += random_configs(space, 4, seed=options.seed)
    measure = ray.remote(num_gpus=1, num_cpus=options.cpus_per_trial)(_measure_memory)
    try:
        answer = ray.get(measure.remote(configs, data.image_shape, data.num_classes),
                         timeout=600)
    except (ray.exceptions.GetTimeoutError, ray.exceptions.RayError) as exc:
        console.print(f"[yellow]warning[/]: no GPU measured memory ({type(exc).__name__}); "
                      "trials get 0.25 GPU each")
        return None
    if answer is None:
        return None
    total, measured = answer
    data_bytes = sum(a.nbytes for a in (data.x_train, data.x_val))
    data_bytes += 8 * (len(data.y_train) + len(data.y_val))  # labels live on the GPU as int64
    packer = Packer(total, data_bytes, data.image_shape, data.num_classes,
                    max_per_gpu=options.trials_per_gpu)
    for config, peak in measured:
        packer.observe(config, peak, data_bytes=0)
    shares = Counter(round(1 / packer.fraction(c)) for c, _ in measured)
    console.print(f"GPU memory {total / 2**30:.0f} GiB; measured {len(measured)} configs "
                  f"(up to {max((p for _, p in measured), default=0) / 2**30:.1f} GiB each): "
                  + ", ".join(f"{n} at {k} per GPU" for k, n in sorted(shares.items())))
    return packer


def _measure_memory(configs, image_shape, num_classes):
    """On a GPU worker: (the GPU's total bytes, [(config, peak bytes)]) or None without CUDA."""
    if not torch.cuda.is_available():
        return None
    measured = []
    for config in configs:
        try:
            measured.append((config, train.peak_memory(config, image_shape, num_classes)))
        except (Infeasible, torch.OutOfMemoryError):
            continue
    return torch.cuda.get_device_properties(0).total_memory, measured


def _storage(options: SearchOptions, study: Path) -> optuna.storages.BaseStorage:
    """Optuna's study: SQLite in the study folder, or --storage (PostgreSQL, MySQL...)."""
    url = options.storage or f"sqlite:///{study.resolve()}/study.db"
    return optuna.storages.RDBStorage(url)


def _new_tuner(space, options, study, trainable, callback, slots, trials: int | None = None,
               name: str = "ray", board: Leaderboard | None = None) -> tune.Tuner:
    """A Tune experiment of `trials` trials (default: the space's) in results/<study>/<name>
    (or --storage-path/<name>); starting points not yet on `board` are enqueued first."""
    concurrency = max(1, int(options.concurrency or space.concurrency or slots))
    # a study extended by a new experiment must not draw the first one's random configs again
    tried = {row["config"].get("point") for row in (board.rows.values() if board else ())}
    sampler = optuna.samplers.TPESampler(seed=options.seed + len(board.rows if board else ()),
                                         constant_liar=True)
    multi = len(space.objectives) > 1
    searcher = HpoSearch(space=space.sample,
                         metric=[m for m, _ in space.objectives] if multi else space.metric,
                         mode=[d for _, d in space.objectives] if multi else space.mode,
                         sampler=sampler, storage=_storage(options, study),
                         study_name=study.name)
    for point in space.starting_points:
        if point not in tried:
            searcher._ot_study.enqueue_trial(space.point_params(point),
                                             user_attrs={"hpo_point": point})
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
    stored = optuna.load_study(study_name=study.name, storage=_storage(options, study))
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
