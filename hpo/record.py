"""The study's record: Optuna's study (results/<study>/study.db, or the database --storage
names) is the study. Everything in the study folder is a view rebuilt from it (hpo.views), and
a resumed run reads it and nothing else.

Its schema, said here once:

    study user attributes   hpo_identity (what a resume must match), hpo_trials (the trials the
                            study runs), hpo_space (the space file's text, path, objectives),
                            hpo_data (the data's absolute path), hpo_runs (one entry per run:
                            its options, host, times, how it ended), hpo_best_weights (the
                            trial whose weights best.pt holds), hpo_importances (each
                            dimension's, from the end of the last run), hpo_warm_start (the
                            study it started from, --warm-start), hpo_select (--select and
                            --select-seeds), hpo_reruns:<n> (the selection's runs of trial n's
                            config with other seeds; Optuna keeps an ended trial as it ended)
    trial user attributes   hpo_kind: "trial" (ran, or runs), "rejected" (a draw that could not
                            be built or would not fit, never run), "duplicate" (a draw of a
                            config already run, given that trial's result), "warm" (an
                            earlier study's trial, given to the sampler by --warm-start, with
                            hpo_warm_from); hpo_config (the
                            complete config), hpo_status (hpo.status.Status), hpo_reason,
                            hpo_epochs (every epoch's report), hpo_params, hpo_checkpoint (its
                            latest checkpoint, while it may be continued), hpo_duplicate_of

How each status is told to Optuna, so that TPE learns from every outcome:

    running, interrupted      RUNNING (a later run continues it from its checkpoint)
    completed                 COMPLETE, the best epoch's value (as the leaderboard ranks it)
    stopped                   PRUNED, with its per-epoch values
    diverged, oom, infeasible PRUNED and infeasible (constraint > 0): TPE ranks them worst
    failed                    FAIL (not the config's fault, as far as anyone knows)

Every write goes through `Record`, which keeps the copy of the record its views are rebuilt
from, and retries a storage that stops answering (a database restarting, a network blip) for
`timeout` seconds before it gives up with RecordUnavailable.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import optuna
import sqlalchemy.exc
from optuna.trial import FrozenTrial, TrialState

from hpo import compat
from hpo.config import LABELS
from hpo.errors import Infeasible, StudyError, StudyFault
from hpo.preflight import masked
from hpo.registry import SAMPLERS, sign
from hpo.space import POINT_ATTR as POINT
from hpo.status import CONFIG_FAULTS, FINISHED, Status

# study user attributes
IDENTITY, TRIALS, SPACE, DATA = "hpo_identity", "hpo_trials", "hpo_space", "hpo_data"
RUNS, BEST_WEIGHTS, IMPORTANCES = "hpo_runs", "hpo_best_weights", "hpo_importances"
WARM_START = "hpo_warm_start"  # the study a new one started from, and how many trials it gave
# trial user attributes
KIND, CONFIG, STATUS, REASON = "hpo_kind", "hpo_config", "hpo_status", "hpo_reason"
EPOCHS, PARAMS, CHECKPOINT, DUPLICATE_OF = ("hpo_epochs", "hpo_params", "hpo_checkpoint",
                                            "hpo_duplicate_of")
SELECT = "hpo_select"  # the study's --select and --select-seeds: {select, select_seeds}
RERUNS = "hpo_reruns:"  # + a trial's number: the selection's runs of its config with other
# seeds, [{seed, value, status}]
CONSTRAINT = "feasible"  # > 0: TPE ranks the trial below every feasible one
WARM_FROM = "hpo_warm_from"  # on a warm-start trial: the study folder and number it came from
# a trial's kinds
TRIAL, REJECTED, DUPLICATE, WARM = "trial", "rejected", "duplicate", "warm"
# what each epoch's report keeps (besides its epoch), in epochs.csv's order
EPOCH_FIELDS = ("val_acc", "val_loss", "train_loss", "img_per_s", "t_start", "t_end", "node",
                "data", "decoded")
STORAGE_TIMEOUT_S = 60.0
STORAGE_ERRORS = (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError)


class RecordUnavailable(StudyFault):
    """The record could not be written for `timeout` seconds; nothing after that is kept."""


@dataclass
class TrialRecord:
    """What the record says of one Optuna trial."""

    number: int
    kind: str  # TRIAL, REJECTED, DUPLICATE
    state: TrialState
    status: Status | None  # a TRIAL's
    config: dict[str, Any]
    reason: str = ""
    epochs: list[dict[str, Any]] = field(default_factory=list)  # each with "epoch"
    params: int | None = None
    values: list[float] | None = None  # Optuna's, once COMPLETE
    checkpoint: str | None = None
    duplicate_of: int | None = None
    drawn: dict[str, Any] = field(default_factory=dict)  # what the sampler drew (its params)
    distributions: dict[str, Any] = field(default_factory=dict)  # ... and from where
    point: str | None = None  # the starting point it is, if one
    reruns: list[dict[str, Any]] = field(default_factory=list)  # the selection's (hpo.select)

    @property
    def unfinished(self) -> bool:
        """A trial an earlier run started and did not end: the next run continues it."""
        return self.kind == TRIAL and self.state == TrialState.RUNNING

    @property
    def epochs_trained(self) -> int:
        return max((e["epoch"] for e in self.epochs), default=0)

    def best(self, metric: str, mode: str) -> tuple[float, int] | None:
        """(the best value of `metric` over its epochs, the epoch it came), the earliest of
        equal values; None before an epoch with a finite value."""
        found = [(e[metric], e["epoch"]) for e in self.epochs
                 if isinstance(e.get(metric), (int, float)) and math.isfinite(e[metric])]
        return max(found, key=lambda v: (sign(mode) * v[0], -v[1])) if found else None

    def runs(self, metric: str, mode: str) -> list[float]:
        """Its value in every run of its config: this trial's best epoch, then each rerun's
        (the selection's, with other seeds; one that failed counts as none)."""
        best = self.best(metric, mode)
        return ([best[0]] if best else []) + [r["value"] for r in self.reruns
                                              if r.get("value") is not None]

    def mean(self, metric: str, mode: str) -> tuple[float, float, int] | None:
        """(mean, standard deviation, runs) of its value over its runs; None before the
        selection reran it."""
        runs = self.runs(metric, mode)
        if not self.reruns or not runs:
            return None
        mean = sum(runs) / len(runs)
        sd = math.sqrt(sum((v - mean) ** 2 for v in runs) / (len(runs) - 1)) if len(runs) > 1 \
            else 0.0
        return mean, sd, len(runs)

    @classmethod
    def of(cls, t: FrozenTrial) -> TrialRecord:
        a = t.user_attrs
        status = a.get(STATUS)
        return cls(number=t.number, kind=a.get(KIND) or "", state=t.state,
                   status=Status(status) if status else None, config=a.get(CONFIG) or {},
                   reason=a.get(REASON) or "", epochs=list(a.get(EPOCHS) or []),
                   params=a.get(PARAMS), values=t.values, checkpoint=a.get(CHECKPOINT),
                   duplicate_of=a.get(DUPLICATE_OF), drawn=dict(t.params),
                   distributions=dict(t.distributions), point=a.get(POINT))


def config_key(config: dict[str, Any]) -> str:
    """What makes two configs the same trial: every value but the labels (a starting point's
    name)."""
    return json.dumps({k: v for k, v in config.items() if k not in LABELS}, sort_keys=True)


def make_sampler(kind: str, seed: int, startup_trials: int) -> optuna.samplers.BaseSampler:
    """An Optuna sampler by its name in hpo.registry.SAMPLERS. TPE gets a constant liar: a
    trial still running counts as a bad one, so trials running side by side spread out."""
    spec = SAMPLERS[kind]
    cls = getattr(optuna.samplers, spec.optuna_class)
    if cls is optuna.samplers.RandomSampler:
        return cls(seed=seed)
    if cls is not optuna.samplers.TPESampler:
        return cls(seed=seed, n_startup_trials=startup_trials)
    with warnings.catch_warnings():  # `group` is experimental in Optuna 5.0: we know
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return cls(seed=seed, constant_liar=True, n_startup_trials=startup_trials,
                   multivariate=spec.multivariate, group=spec.multivariate)


def storage_url(url: str | None, folder: Path) -> str:
    """The record's URL: `url` (--storage), else SQLite in the study folder."""
    return url or f"sqlite:///{(folder / 'study.db').resolve()}"


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's storage at `url`; a pooled connection is checked before use, so a database
    that restarted is reconnected to instead of failing the next write."""
    return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})


def exists(url: str, name: str) -> bool:
    """Whether the storage at `url` holds a study called `name` (creating nothing for a SQLite
    file that does not exist)."""
    if url.startswith("sqlite:///"):
        file = Path(url[len("sqlite:///"):])
        if not file.is_file() or file.stat().st_size == 0:
            return False
    try:
        open_storage(url).get_study_id_from_name(name)
    except KeyError:
        return False
    return True


def discard(url: str, name: str) -> None:
    """Remove study `name` from the storage at `url`, or a SQLite file that is no readable
    record; for what a killed start left behind before any trial ran."""
    try:
        if exists(url, name):
            storage = open_storage(url)
            storage.delete_study(storage.get_study_id_from_name(name))
    except STORAGE_ERRORS:
        if not url.startswith("sqlite:///"):
            raise
        Path(url[len("sqlite:///"):]).unlink(missing_ok=True)


class Record:
    """One study's record: read once when opened, then kept in step with every write (the
    copy the views are rebuilt from). `notify` is told, in one line, when the storage stops
    and starts answering."""

    def __init__(self, study: optuna.Study, url: str, timeout: float = STORAGE_TIMEOUT_S,
                 notify: Callable[[str], None] = print):
        self.study, self.url, self.timeout, self.notify = study, url, timeout, notify
        self.trials: dict[int, TrialRecord] = {}
        self.meta: dict[str, Any] = {}
        self._handles: dict[int, optuna.trial.Trial] = {}  # trials this run writes
        self._steps: dict[int, set[int]] = {}  # epochs told to Optuna, per trial
        self.reload()

    # -- opening --------------------------------------------------------------------------
    @classmethod
    def open(cls, url: str, name: str, objectives: Iterable[tuple[str, str]], sampler: str,
             seed: int, startup_trials: int, *, create: bool,
             timeout: float = STORAGE_TIMEOUT_S, notify: Callable[[str], None] = print
             ) -> Record:
        """The record of study `name` at `url`, created when `create` and missing. Its
        sampler is `sampler` seeded with `seed` plus the trials recorded, so that a resumed
        search does not redraw the random configs of its first run. Raises StudyError (one
        line) when it is missing and not to be created, or unreadable."""
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        where = masked(url)
        try:
            storage = open_storage(url)
            try:
                recorded = storage.get_n_trials(storage.get_study_id_from_name(name))
            except KeyError:
                if not create:
                    raise StudyError(f"{where}: holds no study {name!r}") from None
                recorded = 0
            directions = ["maximize" if m == "max" else "minimize" for _, m in objectives]
            study = optuna.create_study(
                study_name=name, storage=storage, directions=directions, load_if_exists=True,
                sampler=make_sampler(sampler, seed + recorded, startup_trials))
        except STORAGE_ERRORS as exc:
            raise StudyError(f"{where}: the study's record is unreadable ({_first_line(exc)})"
                             "; restore it from a backup, or pass --fresh to start a new "
                             "study beside it") from None
        return cls(study, url, timeout, notify)

    @classmethod
    def load(cls, url: str, name: str) -> Record:
        """The record of study `name` at `url`, to read (its sampler is none of our
        concern). Raises StudyError when it is missing or unreadable."""
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            study = optuna.load_study(study_name=name, storage=open_storage(url))
        except KeyError:
            raise StudyError(f"{masked(url)}: holds no study {name!r}") from None
        except STORAGE_ERRORS as exc:
            raise StudyError(f"{masked(url)}: the study's record is unreadable "
                             f"({_first_line(exc)})") from None
        return cls(study, url)

    def close(self) -> None:
        """Close the connections to the storage (it reconnects when used again)."""
        compat.close(self.study)

    def reload(self) -> None:
        """Read the whole record again (the views are rebuilt from what this finds)."""
        frozen = self._retry(lambda: self.study.get_trials(deepcopy=False))
        self.trials = {t.number: TrialRecord.of(t) for t in frozen}
        self.meta = dict(self._retry(lambda: self.study.user_attrs))
        for key, runs in self.meta.items():
            if key.startswith(RERUNS) and int(key[len(RERUNS):]) in self.trials:
                self.trials[int(key[len(RERUNS):])].reruns = list(runs)

    def settle(self) -> list[int]:
        """End what a driver that died mid-draw left half-made: a draw asked of Optuna whose
        config was never stored, or a rejected or duplicate draw never told. They become
        rejected draws, with the reason; their numbers are returned."""
        settled = []
        for t in list(self.trials.values()):
            if t.state != TrialState.RUNNING or (t.kind == TRIAL and t.config):
                continue
            reason = t.reason or "drawn as the driver stopped; it never ran"
            self._retry(lambda: self._set(t.number, KIND, REJECTED))
            self._retry(lambda: self._set(t.number, REASON, reason))
            self._retry(lambda: self.study.tell(t.number, state=TrialState.FAIL,
                                                skip_if_finished=True))
            t.kind, t.reason, t.state = REJECTED, reason, TrialState.FAIL
            settled.append(t.number)
        return settled

    # -- reading --------------------------------------------------------------------------
    def real(self) -> list[TrialRecord]:
        """The trials that ran or run (not rejected or duplicate draws), by number."""
        return [t for _, t in sorted(self.trials.items()) if t.kind == TRIAL and t.config]

    def unfinished(self) -> list[TrialRecord]:
        return [t for t in self.real() if t.unfinished]

    def ended(self) -> list[TrialRecord]:
        return [t for t in self.real() if not t.unfinished]

    def count(self, kind: str) -> int:
        return sum(t.kind == kind for t in self.trials.values())

    def seen(self) -> dict[str, int]:
        """Config key -> the trial that ran that config."""
        return {config_key(t.config): t.number for t in self.real()}

    def best(self, metric: str, mode: str) -> TrialRecord | None:
        """The study's best: once the selection has rerun the top configs, the one of best
        mean over its runs; before, the best finished (completed or stopped) trial by its
        best epoch's value. Of equal ones, the first."""
        rerun = [(sign(mode) * m[0], -t.number, t) for t in self.real()
                 if (m := t.mean(metric, mode)) is not None]
        if rerun:
            return max(rerun, key=lambda r: r[:2])[2]
        first = self.top(metric, mode, FINISHED, 1)
        return first[0] if first else None

    def top(self, metric: str, mode: str, statuses, k: int) -> list[TrialRecord]:
        """The `k` trials of `statuses` with the best single-run values, best first."""
        ranked = [(sign(mode) * b[0], -t.number, t) for t in self.real()
                  if t.status in statuses and (b := t.best(metric, mode)) is not None]
        return [t for *_, t in sorted(ranked, key=lambda r: r[:2], reverse=True)[:k]]

    # -- the study's attributes -------------------------------------------------------------
    def set_meta(self, key: str, value: Any) -> None:
        self._retry(lambda: self.study.set_user_attr(key, value))
        self.meta[key] = value

    # -- draws ----------------------------------------------------------------------------
    def ask(self) -> optuna.trial.Trial:
        """A new Optuna trial, for the sampler to draw a config with."""
        trial = self._retry(self.study.ask)
        self._handles[trial.number] = trial
        self.trials[trial.number] = TrialRecord(trial.number, "", TrialState.RUNNING, None, {})
        return trial

    def draw(self, trial: optuna.trial.Trial, sample: Callable[[Any], dict[str, Any]]
             ) -> dict[str, Any]:
        """`sample(trial)`: the sampler's draw of a config, its suggestions stored as it goes
        (a retry suggests again what was stored: Optuna returns the values it holds)."""
        return self._retry(lambda: sample(trial))

    def start(self, number: int, config: dict[str, Any]) -> None:
        """A draw becomes a trial that runs `config`."""
        self._retry(lambda: self._set(number, CONFIG, config))
        self._retry(lambda: self._set(number, STATUS, Status.RUNNING.value))
        self._retry(lambda: self._set(number, KIND, TRIAL))
        self.trials[number] = TrialRecord(number, TRIAL, TrialState.RUNNING, Status.RUNNING,
                                          dict(config))
        self._steps[number] = set()

    def reject(self, number: int, exc: Infeasible) -> None:
        """A draw that cannot be built or would not fit: never run, and infeasible to TPE by
        how far it is over the limit."""
        reason = str(exc)[:300]
        self._retry(lambda: self._set(number, KIND, REJECTED))
        self._retry(lambda: self._set(number, REASON, reason))
        self._retry(lambda: self._constraint(number, max(exc.excess, 1e-3)))
        self._retry(lambda: self.study.tell(number, state=TrialState.PRUNED,
                                            skip_if_finished=True))
        self._finish_draw(number, REJECTED, TrialState.PRUNED, reason)

    def duplicate(self, number: int, original: int) -> None:
        """A draw of the config trial `original` ran: not run again; Optuna is given that
        trial's result (its value, or its per-epoch values if pruned)."""
        self._retry(lambda: self._set(number, KIND, DUPLICATE))
        self._retry(lambda: self._set(number, DUPLICATE_OF, original))
        done = self._retry(lambda: self.study.get_trials(deepcopy=False)[original])
        if done.state == TrialState.COMPLETE:
            self._retry(lambda: self.study.tell(number, done.values, skip_if_finished=True))
            state = TrialState.COMPLETE
        elif done.state == TrialState.PRUNED:
            handle = self._handle(number)
            for step, value in done.intermediate_values.items():  # none with two objectives
                self._retry(lambda: handle.report(value, step))
            if done.constraints.get(CONSTRAINT, 0) > 0:
                self._retry(lambda: self._constraint(number, done.constraints[CONSTRAINT]))
            self._retry(lambda: self.study.tell(number, state=TrialState.PRUNED,
                                                skip_if_finished=True))
            state = TrialState.PRUNED
        else:  # still running, or crashed: nothing to reuse, and TPE ignores FAIL
            self._retry(lambda: self.study.tell(number, state=TrialState.FAIL,
                                                skip_if_finished=True))
            state = TrialState.FAIL
        self._finish_draw(number, DUPLICATE, state, "", original)

    def warm_start(self, earlier: Record, space, source: str) -> int:
        """Give the sampler an earlier study's trials as if this study had run them
        (`space`'s view of each config: hpo.space.Space.params_of; its values, its per-epoch
        curve): completed trials at their best epoch, ASHA-stopped ones with their epochs.
        Trials that failed, diverged, ran out of memory or could not be built, and what
        keeps none of the space's dimensions, are not carried. They are no trials of this
        study: no leaderboard row, no trial number among its trials'. Returns how many."""
        from optuna.trial import create_trial

        metric, mode = space.objectives[0]
        dims = space.searched()
        carried = 0
        for t in earlier.real():
            params = space.params_of(t.config)
            best = t.best(metric, mode)
            if not params or best is None or t.status not in FINISHED:
                continue
            curve = {e["epoch"]: e[metric] for e in t.epochs
                     if isinstance(e.get(metric), (int, float)) and math.isfinite(e[metric])}
            others = [t.params] if len(space.objectives) > 1 else []
            if len(space.objectives) > 1 and (t.status != Status.COMPLETED or None in others):
                continue  # Optuna keeps no curve of a study of two objectives
            frozen = create_trial(
                params=params, distributions={k: dims[k].distribution() for k in params},
                state=TrialState.COMPLETE if t.status == Status.COMPLETED else
                TrialState.PRUNED,
                values=[best[0], *others] if t.status == Status.COMPLETED else None,
                intermediate_values=curve if len(space.objectives) == 1 else None,
                user_attrs={KIND: WARM, WARM_FROM: f"{source}#{t.number}"})
            self._retry(lambda: self.study.add_trial(frozen))
            carried += 1
        self.reload()
        return carried

    def _finish_draw(self, number, kind, state, reason, original=None) -> None:
        t = self.trials[number]
        t.kind, t.state, t.reason, t.duplicate_of = kind, state, reason, original
        self._handles.pop(number, None)

    # -- a trial's life --------------------------------------------------------------------
    def resume(self, number: int) -> None:
        """An unfinished trial starts again in this run (from its checkpoint)."""
        self._retry(lambda: self._set(number, STATUS, Status.RUNNING.value))
        t = self.trials[number]
        t.status = Status.RUNNING
        self._steps[number] = set(_reported(t))

    def epoch(self, number: int, report: dict[str, Any], metric: str,
              report_to_optuna: bool = True) -> None:
        """One epoch's report. A trial continued from a checkpoint reports again the epochs
        after it: those replace what was recorded for them, and later ones go."""
        epoch = int(report.get("epoch") or 0)
        t = self.trials[number]
        params = report.get("params")
        if params is not None and params != t.params:
            self._retry(lambda: self._set(number, PARAMS, params))
            t.params = params
        if epoch <= 0:
            return
        row = {"epoch": epoch, **{k: _plain(report.get(k)) for k in EPOCH_FIELDS}}
        epochs = [e for e in t.epochs if e["epoch"] < epoch] + [row]
        self._retry(lambda: self._set(number, EPOCHS, epochs))
        t.epochs = epochs
        value = report.get(metric)
        steps = self._steps.setdefault(number, set())
        if (report_to_optuna and epoch not in steps and isinstance(value, (int, float))
                and math.isfinite(value)):
            handle = self._handle(number)
            self._retry(lambda: handle.report(value, epoch))
            steps.add(epoch)

    def rerun(self, number: int, seed: int, value: float | None, status: Status) -> None:
        """The selection ran trial `number`'s config again with `seed`: its best epoch's
        value (None when it did not finish)."""
        t = self.trials[number]
        runs = [r for r in t.reruns if r["seed"] != seed] + [
            {"seed": seed, "value": _plain(value), "status": status.value}]
        runs.sort(key=lambda r: r["seed"])
        self.set_meta(f"{RERUNS}{number}", runs)
        t.reruns = runs

    def checkpoint(self, number: int, uri: str) -> None:
        """Where the trial's latest checkpoint is, for a later run to continue it."""
        self._retry(lambda: self._set(number, CHECKPOINT, uri))
        self.trials[number].checkpoint = uri

    def interrupt(self, number: int, why: str) -> None:
        """The search stopped while the trial ran: it stays unfinished, to be continued."""
        reason = (f"{why} stopped the search; the same command continues this trial from "
                  "its last checkpoint")
        self._retry(lambda: self._set(number, STATUS, Status.INTERRUPTED.value))
        self._retry(lambda: self._set(number, REASON, reason))
        t = self.trials[number]
        t.status, t.reason = Status.INTERRUPTED, reason

    def end(self, number: int, status: Status, reason: str, metric: str, mode: str,
            others: tuple[float, ...] = ()) -> None:
        """The trial ended as `status`; Optuna is told (see the table above). A completed
        trial's value is its best epoch's (`others`: the further objectives' values)."""
        t = self.trials[number]
        reason = str(reason or "")[:300]
        self._retry(lambda: self._set(number, STATUS, status.value))
        if reason:
            self._retry(lambda: self._set(number, REASON, reason))
        best = t.best(metric, mode)
        values = None
        if status in CONFIG_FAULTS:
            self._retry(lambda: self._constraint(number, 1.0))
            state = TrialState.PRUNED
        elif status == Status.STOPPED:
            state = TrialState.PRUNED
        elif status == Status.COMPLETED and best is not None:
            state, values = TrialState.COMPLETE, [best[0], *others]
        else:
            state = TrialState.FAIL
        self._retry(lambda: self.study.tell(number, values, state=state,
                                            skip_if_finished=True))
        t.status, t.reason, t.state, t.values = status, reason or t.reason, state, values
        self._handles.pop(number, None)

    # -- plumbing -------------------------------------------------------------------------
    def _handle(self, number: int) -> optuna.trial.Trial:
        if number not in self._handles:
            self._handles[number] = compat.trial_handle(self.study, number)
        return self._handles[number]

    def _set(self, number: int, key: str, value: Any) -> None:
        self._handle(number).set_user_attr(key, value)

    def _constraint(self, number: int, value: float) -> None:
        self._handle(number).set_constraint(CONSTRAINT, value)

    def _retry(self, write: Callable[[], Any]) -> Any:
        """`write()`, tried again with growing pauses while the storage does not answer, for
        up to `timeout` seconds; then RecordUnavailable."""
        t0, pause, told = time.monotonic(), 0.5, False
        while True:
            try:
                result = write()
            except STORAGE_ERRORS as exc:
                waited = time.monotonic() - t0
                if waited >= self.timeout:
                    raise RecordUnavailable(
                        f"{masked(self.url)}: the study's record could not be written for "
                        f"{self.timeout:g} s ({_first_line(exc)})") from None
                if not told:
                    self._say(f"the study's record at {masked(self.url)} does not answer "
                              f"({_first_line(exc)}); retrying for up to {self.timeout:g} s")
                    told = True
                time.sleep(min(pause, max(0.0, self.timeout - waited)))
                pause = min(pause * 2, 8.0)
                continue
            if told:
                self._say(f"the study's record answers again after "
                          f"{time.monotonic() - t0:.0f} s")
            return result

    def _say(self, line: str) -> None:
        with contextlib.suppress(OSError):  # where it goes may be the full disk
            self.notify(line)


def _reported(t: TrialRecord) -> list[int]:
    return [e["epoch"] for e in t.epochs]


def _plain(value: Any) -> Any:
    """A report's value as JSON keeps it (NaN and infinities as None)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _first_line(exc: BaseException) -> str:
    """What the database said, in one line: the error at the root of the chain (Optuna's own
    wraps it in a guess about "invalid data in the commit"), without SQLAlchemy's
    '(Background on this error ...)'."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    text = str(getattr(exc, "orig", None) or exc).strip()
    return (text.splitlines() or [type(exc).__name__])[0][:200]
