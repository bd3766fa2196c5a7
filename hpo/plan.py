"""A search checked before anything starts: `plan_search` turns a space file and the options
into a Plan, or refuses in one line.

It checks every option, the space file, the output folder, the database (--storage) and the
cluster (--address), what a trial asks of this machine, and the study folder: a new study, one
to resume (its record read, its recorded settings filled in where the command leaves them out
and compared where it gives them), a folder a killed start left (taken over), or one it must
not touch (a record lost or damaged while its views say trials ran). It writes nothing and
imports neither torch nor Ray, so a mistake costs a second and changes no file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpo.errors import StudyError
from hpo.folder import StudyFolder
from hpo.lock import StudyLock
from hpo.options import IDENTITY, STICKY, SearchOptions, check, declared, flag
from hpo.preflight import (
    check_address,
    check_data_path,
    check_local_resources,
    check_output,
    check_storage,
    masked,
)
from hpo.space import Space, load_space
from hpo.weights import check_weights


@dataclass(frozen=True)
class Plan:
    """A search ready to start: the space under its budget, every option resolved, the
    folder, where the record is, and what it recorded ({} for a new study)."""

    space: Space
    options: SearchOptions
    folder: StudyFolder
    url: str  # the record's
    recorded: dict[str, Any]  # the record's study attributes (hpo.record), {} when new

    @property
    def resumed(self) -> bool:
        return bool(self.recorded)

    def identity(self, data_content: str | None) -> dict[str, Any]:
        """What makes this study, with the decoded images' content hash (None: not decoded
        yet)."""
        o = self.options
        return {"space": hashlib.sha256(self.space.source.encode()).hexdigest(),
                "data": data_content, "max_epochs": self.space.max_epochs,
                "grace_period": self.space.grace_period, "fraction": o.fraction,
                "split_seed": o.split_seed, "seed": o.seed,
                "storage": masked(o.storage) if o.storage else None}


def choose_folder(results: Path, name: str, fresh: bool) -> Path:
    """results/<name>, or with --fresh the first results/<name>-N that does not exist yet."""
    folder = results / name
    n = 2
    while fresh and folder.exists():
        folder, n = results / f"{name}-{n}", n + 1
    return folder


def plan_search(space_path, options: SearchOptions) -> Plan:
    """Check everything that can be checked before a search starts and return its Plan;
    raise StudyError (or another HpoError: one line naming the option, file or setting)
    otherwise. Reads, never writes; imports neither torch nor Ray."""
    options = check(options)
    space = load_space(space_path)
    check_weights(space=space, weights_dir=options.weights_dir)
    results = Path(options.results)
    check_output(results, "--results", folder=True)
    if options.storage:
        check_storage(options.storage)
    if options.address:
        check_address(options.address)
    check_local_resources(options)
    folder = StudyFolder(choose_folder(results, options.name or space.name, options.fresh))
    held = StudyLock(folder.path).holder()
    if held:
        raise StudyError(f"{folder.path}: another hpo search is running this study ({held}); "
                         "wait for it to end, or pass --name for a study of its own")
    from hpo.record import storage_url  # optuna: only once the options are known good

    url = storage_url(options.storage, folder.path)
    recorded = _recorded(folder, url)
    options = _resolve(options, recorded, space)
    space = apply_budget(space, options.trials, options.max_epochs, options.grace_period)
    plan = Plan(space, options, folder, url, recorded)
    if recorded:
        compare(plan, recorded["hpo_identity"], plan.identity(
            recorded["hpo_identity"].get("data")))
    if options.warm_start and not recorded:
        check_warm_start(options.warm_start, space)
    if not options.data:
        raise StudyError(f"{space.path}: no data: pass --data or set `data` in the space file")
    check_data_path(options.data)
    return plan


def check_warm_start(folder: str, space: Space) -> None:
    """Raise StudyError unless `folder` (--warm-start) is a study whose record this search
    can start from: a study folder with its SQLite record, of the same metric."""
    from hpo.record import SPACE, Record

    study = StudyFolder(folder)
    if not study.record.is_file():
        raise StudyError(f"--warm-start {folder}: no study record (study.db) there")
    earlier = Record.load(f"sqlite:///{study.record.resolve()}", study.name)
    objectives = [tuple(o) for o in (earlier.meta.get(SPACE) or {}).get("objectives", [])]
    earlier.close()
    if objectives[:1] != list(space.objectives[:1]):
        raise StudyError(f"--warm-start {folder}: it searched for {objectives[:1] or 'nothing'}"
                         f", this space for {list(space.objectives[:1])}: no value carries")


def apply_budget(space: Space, trials: int | None = None, max_epochs: int | None = None,
                 grace_period: int | None = None) -> Space:
    """`space` under a search's budget: each of `trials`, `max_epochs` (which also caps the
    grace period) and `grace_period` as the space file has it when None. Raises StudyError
    for a grace period outside 1..max_epochs."""
    if trials is not None:
        space = dataclasses.replace(space, trials=trials)
    if max_epochs is not None:
        space = dataclasses.replace(space, max_epochs=max_epochs,
                                    grace_period=min(space.grace_period, max_epochs))
    if grace_period is not None:
        if not 1 <= grace_period <= space.max_epochs:
            raise StudyError(f"--grace-period must be in 1..{space.max_epochs} (the max "
                             f"epochs of a trial), got {grace_period}")
        space = dataclasses.replace(space, grace_period=grace_period)
    return space


def _recorded(folder: StudyFolder, url: str) -> dict[str, Any]:
    """The record's study attributes for a study that exists; {} for a new one, or for a
    folder a killed start left before the study had an identity. Refuses, naming the file,
    a folder whose views say trials ran but whose record is missing or unreadable."""
    from hpo.record import IDENTITY as KEY
    from hpo.record import exists, open_storage

    path = folder.path
    if path.exists() and not path.is_dir():
        raise StudyError(f"{path}: exists and is not a folder; pass --name for another study")
    views = folder.views() if path.is_dir() else []
    attrs, trials = {}, 0
    try:
        if exists(url, folder.name):
            storage = open_storage(url)
            study_id = storage.get_study_id_from_name(folder.name)
            attrs, trials = storage.get_study_user_attrs(study_id), storage.get_n_trials(study_id)
    except Exception as exc:  # SQLAlchemy's and Optuna's: a file that is no database
        if views or not url.startswith("sqlite") or not folder.startup_only():
            raise StudyError(f"{_where(folder, url)}: the study's record is unreadable "
                             f"({_first(exc)}); restore it from a backup, or pass --fresh "
                             "to start a new study beside it; nothing was changed") from None
        return {}  # a record a killed start left half-written, before any trial: remade
    if KEY in attrs and trials:
        return attrs
    if KEY in attrs:
        return {}  # born, but no trial ever ran: nothing to keep, so it starts over
    if views:
        raise StudyError(_missing(folder, url, views))
    if path.is_dir() and not folder.startup_only():
        raise StudyError(f"{path}: holds files but no study record, so it is not an hpo "
                         "study; pass --name for another folder")
    return {}  # new, or what a killed start left: the same command takes it over


def _missing(folder: StudyFolder, url: str, views: list[Path]) -> str:
    try:
        recorded_at = json.loads(folder.meta.read_text()).get("record")
    except (OSError, ValueError, AttributeError):
        recorded_at = None
    names = ", ".join(v.name for v in views)
    if recorded_at and recorded_at != masked(url) and not recorded_at.startswith("sqlite"):
        return (f"{folder.path}: this study's record is in {recorded_at} ({folder.meta.name} "
                f"says), not in {masked(url)}: pass --storage with its URL and password")
    return (f"{_where(folder, url)}: the study's record is missing, though {names} say "
            "trials ran; restore it from a backup, or pass --fresh to start a new study "
            "beside it; nothing was changed")


def _where(folder: StudyFolder, url: str) -> str:
    return str(folder.record) if url.startswith("sqlite") else masked(url)


def _first(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return (text.splitlines() or [type(exc).__name__])[0][:200]


def _resolve(options: SearchOptions, recorded: dict[str, Any], space: Space) -> SearchOptions:
    """Options with the recorded value (identity and sticky options), else the declared
    fallback, wherever the command left one out."""
    from hpo.record import DATA, SELECT, TRIALS

    identity = recorded.get("hpo_identity", {})
    sticky = {"data": recorded.get(DATA), "trials": recorded.get(TRIALS),
              **(recorded.get(SELECT) or {})}
    filled = {}
    for name, (_, o) in declared(SearchOptions).items():
        if getattr(options, name) is not None or o.resume not in (IDENTITY, STICKY):
            continue
        value = identity.get(name) if o.resume == IDENTITY else sticky.get(name)
        if name == "storage":
            value = None  # never written down with its password: given again, or SQLite
        filled[name] = value if value is not None else o.fallback
    options = dataclasses.replace(options, **filled)
    if options.data is None and space.data:
        options = dataclasses.replace(options, data=space.data)
        options = check(options)  # a space file's relative path, made absolute
    return options


def compare(plan: Plan, recorded: dict[str, Any], given: dict[str, Any]) -> None:
    """Raise StudyError naming the first setting in which a resume differs from the
    study's identity."""
    folder = plan.folder.path
    fresh = "pass --fresh to start a new study, or --name"
    for key, value in given.items():
        if recorded.get(key) == value:
            continue
        if key == "space":
            raise StudyError(f"{folder}: the space file differs from the one this study "
                             f"searched ({plan.folder.space}); {fresh}")
        if key == "data":
            raise StudyError(f"{folder}: --data (the images themselves) differ from the ones "
                             f"this study searched (content {recorded.get(key)}, given "
                             f"{value}); {fresh}")
        raise StudyError(f"{folder}: {flag(key)} differs from this study's: recorded "
                         f"{recorded.get(key)!r}, given {value!r}; {fresh}")
