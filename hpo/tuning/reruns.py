"""The selection's reruns on Ray Tune: the top configs trained again with other seeds at their
full epochs (hpo.selection says which), each run's best epoch written into the record, the
chosen config's weights kept as best.pt."""

from __future__ import annotations

import math
import time
from typing import Any, Callable

from ray import tune
from ray.tune.search import Searcher
from rich.console import Console

from hpo import compat
from hpo.data import Dataset
from hpo.errors import StudyFault
from hpo.folder import StudyFolder
from hpo.live import Progress
from hpo.record import BEST_WEIGHTS, Record
from hpo.registry import sign
from hpo.status import Status, decide
from hpo.tuning.callbacks import delete_checkpoints
from hpo.tuning.trainable import best_weights

EXPERIMENT = "select"  # beside the search's `ray` folder: select/<trial>-seed<s>


def run_reruns(todo: list[tuple[int, int]], record: Record, folder: StudyFolder, space,
               options, data: Dataset, console: Console, trainable: Callable, resources,
               concurrency: int, stop, reporter) -> None:
    """Run each (trial number, seed) of `todo` to its full epochs and record its best epoch;
    then make best.pt the weights of the best mean's config. `stop` is the search's stopper
    (Ctrl-C, SIGTERM, a fault end this too: what has not finished runs next time), `reporter`
    its silent Tune reporter."""
    configs = [{**record.trials[n].config, "seed": seed, "trial": n, "rerun": seed}
               for n, seed in todo]
    progress = Progress(console, f"{folder.name} (select)", len(configs), space.metric,
                        space.mode, max_epochs=space.max_epochs, concurrency=concurrency)
    watch = _Watch(record, space, progress, stop.searcher)
    wrapped = tune.with_resources(tune.with_parameters(
        trainable, data=data.without_test(), metric=space.metric, mode=space.mode, rungs=(),
        checkpoint_every=math.inf, resume={}), resources)
    tuner = tune.Tuner(wrapped, tune_config=tune.TuneConfig(
        search_alg=Listed(configs), num_samples=len(configs),
        max_concurrent_trials=concurrency, metric=space.metric, mode=space.mode,
        trial_name_creator=_name, trial_dirname_creator=_name),
        run_config=tune.RunConfig(
            name=f"{folder.name}-{EXPERIMENT}" if options.storage_path else EXPERIMENT,
            storage_path=options.storage_path or str(folder.path.resolve()), verbose=0,
            progress_reporter=reporter, callbacks=[watch], stop=stop,
            failure_config=tune.FailureConfig(max_failures=2),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
    progress.message(f"selection: the top {len({n for n, _ in todo})} configs train again "
                     f"with {len(todo)} more seeds in all, to choose the best by its mean")
    with progress:
        tuner.fit()
    watch.keep_best(folder, options.keep_checkpoints)


class Listed(Searcher):
    """The reruns' configs, in order, as Tune asks for trials."""

    def __init__(self, configs: list[dict]):
        super().__init__()
        self.configs = list(configs)

    def suggest(self, trial_id: str):
        return self.configs.pop(0) if self.configs else Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        pass


def _name(trial) -> str:
    return f"trial-{trial.config['trial']:04d}-seed{trial.config['rerun']}"


def _label(trial) -> str:
    """How the live view names a rerun: "best val_acc 0.91 (trial 5 seed 1)"."""
    return f"{trial.config['trial']} seed {trial.config['rerun']}"


class _Watch(compat.DriverOnly, tune.Callback):
    """Each rerun's best epoch into the record as it ends; its last checkpoint kept (it
    holds its best epoch's weights) until the best is chosen."""

    driver_only = ("record", "progress", "searcher")

    def __init__(self, record: Record, space, progress: Progress, searcher):
        self.record, self.space, self.progress, self.searcher = record, space, progress, searcher
        self.best: dict[str, float] = {}
        self.last: dict[str, dict] = {}
        self.checkpoints: dict[tuple[int, int], Any] = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        self.progress.trial_started(_label(trial), "", trial.config.get("epochs"))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.space.metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            old = self.best.get(trial.trial_id)
            if old is None or sign(self.space.mode) * value > sign(self.space.mode) * old:
                self.best[trial.trial_id] = value
        self.last[trial.trial_id] = result
        self.progress.trial_result(_label(trial), result)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        self.checkpoints[(trial.config["trial"], trial.config["rerun"])] = checkpoint

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended(trial, error=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        if self.searcher is None or not self.searcher.interrupted:
            self._ended(trial, error=True)

    def _ended(self, trial, error: bool) -> None:
        status = decide(self.last.get(trial.trial_id), error)
        if status is not Status.COMPLETED and self.searcher is not None and (
                self.searcher.interrupted or self.searcher.error):
            # cut short by a stop: unrecorded, it runs again next time
            self.progress.trial_ended(_label(trial), str(Status.INTERRUPTED))
            return
        try:
            self.record.rerun(trial.config["trial"], trial.config["rerun"],
                              self.best.get(trial.trial_id) if not error else None, status)
        except StudyFault as exc:
            self.searcher.fault(exc)
        self.progress.trial_ended(_label(trial), str(status))

    def keep_best(self, folder: StudyFolder, keep_checkpoints: bool) -> None:
        """best.pt from the chosen config's best rerun, unless it already holds that
        config's; then the reruns' checkpoints go."""
        metric, mode = self.space.metric, self.space.mode
        best = self.record.best(metric, mode)
        held = (self.record.meta.get(BEST_WEIGHTS) or {}).get("trial")
        if best is not None and held != best.number:
            runs = [r for r in best.reruns if r.get("value") is not None
                    and (best.number, r["seed"]) in self.checkpoints]
            if runs:
                top = max(runs, key=lambda r: sign(mode) * r["value"])
                best_weights(self.checkpoints[(best.number, top["seed"])], folder.best_weights)
                self.record.set_meta(BEST_WEIGHTS, {"trial": best.number,
                                                    "seed": top["seed"], "at": time.time()})
        if not keep_checkpoints:
            for checkpoint in self.checkpoints.values():
                delete_checkpoints(checkpoint)
