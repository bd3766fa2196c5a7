"""The search on Ray Tune: the only package that imports Ray (and only once a search starts).

Optuna's TPE proposes configs (define-by-run over the space file), ASHA stops the weak ones
at its rungs, Ray Tune runs the trials, and a callback keeps the leaderboard and the progress
view current. The dataset is decoded once here and shipped to trials through Ray's object store.

    options     what the command line asks, checked before anything starts (no torch, no Ray)
    driver      a study from start to end: Ray up, one Tune experiment fed by the record
    searcher    the Optuna study as the study's record; Tune's searcher over ask/tell
    scheduler   ASHA over epochs, seeded with what earlier runs of the study recorded
    trainable   Ray's side of one trial: run_trial reporting to Tune, checkpoints
    observer    the driver's callback: leaderboard, best weights, progress, timings
    placement   what each trial asks Ray for, and whether a config fits at all
    cluster     joining a running cluster: its Ray and Python must be this process's
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from hpo.tuning.options import SearchOptions, StudyError, check_data, plan_search

__all__ = ["SearchOptions", "StudyError", "plan_search", "run_study"]


def run_study(space: str | os.PathLike, options: SearchOptions, console=None) -> Path:
    """Run the study of `space` (a space file's path) under `options`, or continue it: the
    same folder, lock and resume as `hpo search`. Returns the study folder. The progress is
    drawn on `console` (a rich Console; default: the terminal); everything Ray prints goes
    to <study>/ray.log (with options.verbose, to the console too).

    Raises StudyError (one line) for bad options, files or a study held by another driver,
    before anything is written; KeyboardInterrupt after Ctrl-C, once everything is saved.

    Example:
        >>> folder = run_study("spaces/cifar10.py", SearchOptions(data="data/cifar10", trials=8))
        >>> pandas.read_csv(folder / "leaderboard.csv").head()
    """
    plan = plan_search(space, options)  # before the imports below: a mistake costs little
    from hpo.data import load_dataset
    from hpo.lock import StudyLock
    from hpo.progress import output_to
    from hpo.sources import DataError

    lock = StudyLock(plan.folder)
    try:
        lock.__enter__()
    except OSError as exc:
        raise StudyError(f"{plan.folder}: cannot write the study here ({exc.strerror})") from None
    try:
        t0 = time.time()
        s, o = plan.space, plan.options
        try:
            data = load_dataset(o.data, val_fraction=s.val_fraction, seed=o.split_seed,
                                fraction=o.fraction, image_size=s.image_size,
                                channels=s.channels)
            check_data(plan, data.content)
        except DataError as exc:
            raise StudyError(str(exc)) from None
        data_s = time.time() - t0
        try:
            with output_to(plan.folder / "ray.log", console, o.verbose) as console:
                # torch and Ray, only now; what they print as they load goes to ray.log too
                from hpo.tuning.driver import run_search

                return run_search(plan, data, console, data_s=data_s)
        except StudyError:
            # refused before it began (e.g. a cluster of another Ray): a new study's folder
            # goes, so the same command with the mistake mended starts afresh
            if lock.created and not (plan.folder / "study.json").exists():
                shutil.rmtree(plan.folder, ignore_errors=True)
            raise
    finally:
        lock.__exit__(None, None, None)
