"""A study's life above Ray: planned (hpo.plan), held (hpo.lock), born or adopted, its record
opened and its views rebuilt, its data decoded, then searched (hpo.tuning) and, with --final,
its best retrained. Also: the space and the data a finished study searched, for the commands
that read it afterwards.

The order is what makes a kill at any instant harmless: a new study's folder holds nothing but
its lock until its data is decoded, then its identity goes into its record before Ray starts;
a folder holding nothing but what a killed start leaves behind is taken over by the same
command.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from hpo.errors import StudyError
from hpo.folder import StudyFolder
from hpo.options import SearchOptions, check
from hpo.plan import Plan, apply_budget, compare, plan_search
from hpo.provenance import now


def run_study(space: str | os.PathLike, options: SearchOptions, console=None,
              trainable=None) -> Path:
    """Run the study of `space` (a space file's path) under `options`, or continue it: the
    same folder, lock and resume as `hpo search`. Returns the study folder. The progress is
    drawn on `console` (a rich Console; default: the terminal); everything Ray prints goes
    to <study>/ray.log (with options.verbose, to the console too). `trainable` replaces the
    trial Ray runs (tests pass a fast one; see hpo.tuning.trainable.train_trial).

    Raises an HpoError (one line) for bad options, files or a study held by another driver,
    before anything is written; StudyFault after a fault it could not ride out (its record
    unreachable, a full disk), KeyboardInterrupt after Ctrl-C, each once everything is saved.
    `options.final` is the caller's to act on (hpo.final.train), once this returns.

    Example:
        >>> folder = run_study("spaces/cifar10.py", SearchOptions(data="data/cifar10", trials=8))
        >>> pandas.read_csv(folder / "leaderboard.csv").head()
    """
    plan = plan_search(space, options)  # before the imports below: a mistake costs little
    from hpo.capture import output_to
    from hpo.data import load_dataset
    from hpo.lock import StudyLock

    folder, o, s = plan.folder, plan.options, plan.space
    lock = StudyLock(folder.path)
    try:
        lock.__enter__()
    except OSError as exc:
        raise StudyError(f"{folder.path}: cannot write the study here ({exc.strerror})"
                         ) from None
    try:
        # the data first: a folder holding only the lock, should this be killed, is taken
        # over by the same command, and data hpo cannot read leaves no study behind
        t0 = time.time()
        data = load_dataset(o.data, val_fraction=s.val_fraction, seed=o.split_seed,
                            fraction=o.fraction, image_size=s.image_size, channels=s.channels)
        data_s = time.time() - t0
        check_content(plan, data.content)
        record = begin(plan, console, data.content)
        if not complete(plan, record, console):
            with output_to(folder.ray_log, console, o.verbose) as shown:
                # torch and Ray, only now; what they print as they load goes to ray.log too
                from hpo.tuning.driver import run_search

                run_search(plan, record, data, shown, run_entry(plan), data_s=data_s,
                           trainable=trainable)
    finally:
        lock.__exit__(None, None, None)
    return folder.path


def begin(plan: Plan, console=None, content: str | None = None):
    """The study's record, made whole before Ray starts (a new study's identity, with its
    images' `content` hash, goes in last: its presence is what marks a study born) or
    opened; half-made draws settled; every view rebuilt from it. The caller holds the lock."""
    from hpo import record as r
    from hpo import views

    folder, space, o = plan.folder, plan.space, plan.options
    folder.clear_temps()
    notify = _notifier(console)
    new = not plan.recorded
    if new:
        r.discard(plan.url, folder.name)  # what a killed or failed start left: no trial ran
    record = r.Record.open(plan.url, folder.name, space.objectives, space.sampler, o.seed,
                           space.startup_trials, create=new, timeout=o.storage_timeout,
                           notify=notify)
    if new:
        record.set_meta(r.SPACE, {"path": str(Path(space.path).resolve()),
                                  "source": space.source,
                                  "objectives": [list(x) for x in space.objectives]})
        if o.warm_start:
            earlier = StudyFolder(o.warm_start)
            carried = record.warm_start(r.Record.load(
                f"sqlite:///{earlier.record.resolve()}", earlier.name), space, o.warm_start)
            record.set_meta(r.WARM_START, {"study": o.warm_start, "trials": carried})
            notify(f"warm start: {carried} trials of {o.warm_start} given to the sampler "
                   "(values this space does not search or allow left out)")
        record.set_meta(r.IDENTITY, plan.identity(content))
    elif record.meta[r.IDENTITY].get("data") is None and content is not None:
        record.set_meta(r.IDENTITY, {**record.meta[r.IDENTITY], "data": content})
    if record.meta.get(r.TRIALS) != space.trials:
        record.set_meta(r.TRIALS, space.trials)
    if record.meta.get(r.DATA) != o.data:
        record.set_meta(r.DATA, o.data)
    selection = {"select": o.select, "select_seeds": o.select_seeds}
    if record.meta.get(r.SELECT) != selection:
        record.set_meta(r.SELECT, selection)
    settled = record.settle()
    if settled and console is not None:
        console.print(f"{len(settled)} draw(s) a stopped driver left half-made are counted as "
                      "rejected")
    views.rebuild(folder, record)
    return record


def check_content(plan: Plan, content: str) -> None:
    """Raise StudyError when a resumed study's recorded images differ from those decoded
    (their `content` hash), before anything of the study is touched."""
    identity = plan.recorded.get("hpo_identity") or {}
    if identity.get("data") is not None:
        compare(plan, identity, {"data": content})


def complete(plan: Plan, record, console=None) -> bool:
    """Whether the record holds every trial the study asks for, with none to continue; then
    say so. A complete study run again changes nothing."""
    from hpo.selection import pending

    s, o = plan.space, plan.options
    if (record.unfinished() or len(record.ended()) < s.trials
            or pending(record, s.metric, s.mode, o.select, o.select_seeds)):
        return False
    if console is None:
        from rich.console import Console

        console = Console(soft_wrap=True)
    console.print(f"{plan.folder.path}: this study is complete ({len(record.ended())} trials; "
                  "--trials N extends it, --fresh starts a new one)")
    return True


def _notifier(console):
    if console is None:
        return lambda line: print(line, file=sys.stderr)
    return lambda line: console.print(line, markup=False, highlight=False)


# -- reading a study afterwards ------------------------------------------------------------
def read_meta(study: str | os.PathLike) -> dict[str, Any]:
    """study.json (a view of the record), or {} for a folder that has none. Raises StudyError
    naming the file when it is not readable JSON."""
    import json

    path = StudyFolder(study).meta
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StudyError(f"{path}: cannot be read ({exc}); `hpo leaderboard "
                         f"{path.parent}` rebuilds it from the record") from None


def load_study_space(study: str | os.PathLike):
    """The space a study searched, under the budget it ran with: its copy in the folder, or,
    when the copy cannot load on its own (a space file that builds on another beside it), the
    original it names."""
    from hpo.space import SpaceError, load_space

    folder = StudyFolder(study)
    meta = read_meta(study)
    try:
        space = load_space(folder.space)
    except SpaceError:
        original = meta.get("space")
        if not original or not Path(original).is_file():
            raise
        space = load_space(original)
        if space.source != folder.space.read_text():
            raise SpaceError(f"{folder.path}: space.py does not load on its own and "
                             f"{original} has changed since the study") from None
    identity = meta.get("identity") or {}
    return apply_budget(space, meta.get("trials"), identity.get("max_epochs"),
                        identity.get("grace_period"))


def load_study_data(study: str | os.PathLike, data: str | None = None,
                    fraction: float | None = None):
    """The space and the data a study searched, with its test split: (Space, Dataset).

    `data` and `fraction` override what the study recorded (e.g. the full data for a final
    retrain of a study searched on a fraction).
    """
    from hpo.data import load_dataset
    from hpo.preflight import check_data_path

    meta = read_meta(study)
    identity = meta.get("identity") or {}
    space = load_study_space(study)
    source = data or meta.get("data")
    if not source:
        raise StudyError(f"{study}: no data recorded; pass --data")
    check_data_path(source)
    frac = fraction if fraction is not None else identity.get("fraction") or 1.0
    dataset = load_dataset(source, val_fraction=space.val_fraction,
                           seed=identity.get("split_seed") or 0, fraction=frac,
                           image_size=space.image_size, channels=space.channels)
    return space, dataset


def run_entry(plan: Plan) -> dict[str, Any]:
    """What the record keeps of one run of a study, as it starts."""
    options = {**_jsonable(check(plan.options)), "max_epochs": plan.space.max_epochs,
               "grace_period": plan.space.grace_period, "trials": plan.space.trials}
    return {"started": now(), "host": socket.gethostname(), "pid": os.getpid(),
            "trials": plan.space.trials, "options": options}


def _jsonable(options) -> dict[str, Any]:
    import dataclasses

    out = dataclasses.asdict(options)
    if out.get("storage"):
        from hpo.preflight import masked

        out["storage"] = masked(out["storage"])
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
