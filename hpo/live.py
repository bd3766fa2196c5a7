"""The live view of a running study in the terminal or a Jupyter cell, fed by trial events; one
plain line per event where the output is not a terminal (a log file, CI).

No Ray here: the search's Tune callback turns what Tune sees into these events, and a test
feeds them by hand.
"""

from __future__ import annotations

import io
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from hpo import fmt
from hpo.estimate import expected_epochs, makespan
from hpo.registry import sign
from hpo.status import Status

FINISHED_ROWS = 4  # the last few finished trials stay in view, under the running ones


@dataclass
class _Trial:
    trial_id: str
    label: str  # the starting point's name, if it is one
    epochs: int | None
    started: float
    epoch: int = 0
    value: float | None = None  # the metric at the last epoch
    best: float | None = None
    img_per_s: float | None = None
    epoch_s: list[float] = field(default_factory=list)  # each epoch: training + evaluation
    startup_s: float | None = None  # from start to the first epoch, less that epoch
    last: float = 0.0  # when it last reported
    printed: float = -math.inf  # when its last plain epoch line went out
    status: str = Status.RUNNING
    reason: str = ""
    ended: float | None = None

    @property
    def name(self) -> str:
        return self.label or self.trial_id


class Progress:
    """What a running study is doing, from events: `trial_started`, `trial_result`,
    `trial_ended` for each trial, `study_update` for the study's counts and best.

    On a terminal or in a Jupyter cell (use it as a context manager) it is a live view,
    redrawn at most `refresh_per_second` times a second to the console's width (in a cell:
    one output updated in place, on each event): a row per running trial
    (epoch, current and best metric, img/s, elapsed), the last few finished ones with status
    and reason, the study's counts and best so far, and an estimate of the time left. Else
    each event is one plain line (epoch lines at most one per trial every `plain_every_s`,
    besides its first and last), with no control codes.

    The time left is estimated from measured epoch and start-up times and ASHA's rungs
    (`rungs`: the epochs below `max_epochs` where ASHA keeps the top 1/`reduction_factor`),
    and never goes past a budget that ends the run first: `epoch_budget` epochs reported in
    all, `time_budget` seconds from the start: see `time_left`. `clock` is time.time; a test
    passes its own.
    """

    def __init__(self, console: Console, study: str, trials: int, metric: str,
                 mode: str = "max", *, max_epochs: int | None = None,
                 rungs: Sequence[int] = (), reduction_factor: float = 3.0,
                 concurrency: int | None = None, epoch_budget: int | None = None,
                 time_budget: float | None = None, refresh_per_second: float = 4,
                 plain_every_s: float = 10.0, clock: Callable[[], float] = time.time):
        self.console, self.study, self.trials, self.metric = console, study, trials, metric
        self.epoch_budget, self.time_budget = epoch_budget, time_budget
        self.epochs_reported = 0  # in this run, as the driver's budget counts them
        self.mode, self.max_epochs, self.rungs = mode, max_epochs, tuple(rungs)
        self.reduction_factor, self.concurrency = reduction_factor, concurrency
        self.plain_every_s, self.clock = plain_every_s, clock
        self.live_view = console.is_terminal or console.is_jupyter
        self.t0 = clock()
        self.running: dict[str, _Trial] = {}
        self.finished: list[_Trial] = []  # in the order they ended
        self.counts: dict[str, int] | None = None  # the study's, when the driver sends them
        self.best: tuple[float, str, str] | None = None  # value, trial id, point name
        self.most_running = 0  # trials seen running at once: the concurrency, if not given
        self._anchor: tuple[float, float, float] | None = None  # the last estimate made
        self._bound = ""  # the budget that ends the run before its trials do, if one does
        self._summary_due = False  # a trial ended: the plain study line goes out next
        self._lock = threading.Lock()  # events arrive on the driver's thread, redraws on rich's
        self.live: Live | _CellView | None = None
        if console.is_jupyter:
            # rich's Live needs ipywidgets in a notebook, and shows nothing without them
            self.live = _CellView(self, console.width, refresh_per_second, clock)
        elif self.live_view:
            self.live = Live(self, console=console, refresh_per_second=refresh_per_second,
                             redirect_stdout=False, redirect_stderr=False)

    # events ---------------------------------------------------------------------------------

    def trial_started(self, trial_id: str, label: str = "", epochs: int | None = None) -> None:
        """A trial began (or began again after a retry or a resume: its best so far stays)."""
        with self._lock:
            before = self.running.get(trial_id) or next(
                (t for t in self.finished if t.trial_id == trial_id), None)
            trial = _Trial(trial_id, label, epochs or self.max_epochs, started=self.clock())
            trial.last = trial.started
            if before is not None:
                trial.best, trial.epoch_s = before.best, before.epoch_s
                self.finished = [t for t in self.finished if t.trial_id != trial_id]
            self.running[trial_id] = trial
            self.most_running = max(self.most_running, len(self.running))
        self._reestimate()
        self._line(f"{_who(trial)} started: {trial.epochs or '?'} epochs")

    def trial_result(self, trial_id: str, metrics: Mapping[str, Any]) -> None:
        """One epoch's report: `epoch`, `epochs`, the metric, `img_per_s`, and the epoch's
        time as `t_start`/`t_end` (else `train_seconds`). A report with epoch 0 (a trial that
        could not be built) only updates the row."""
        now = self.clock()
        with self._lock:
            trial = self.running.get(trial_id)
            if trial is None:
                return
            epoch = int(metrics.get("epoch") or 0)
            trial.epochs = metrics.get("epochs") or trial.epochs
            if epoch <= 0:
                return
            self.epochs_reported += 1
            spent = _epoch_seconds(metrics)
            if spent is not None:
                if trial.startup_s is None and epoch == 1:
                    trial.startup_s = max(0.0, now - trial.started - spent)
                del trial.epoch_s[epoch - 1:]  # a trial started again re-reports epochs
                trial.epoch_s.append(spent)
            trial.epoch, trial.last = epoch, now
            value = metrics.get(self.metric)
            if value is not None and math.isfinite(value):
                trial.value = value
                if trial.best is None or sign(self.mode) * value > sign(self.mode) * trial.best:
                    trial.best = value
            if metrics.get("img_per_s"):
                trial.img_per_s = metrics["img_per_s"]
            due = (epoch == 1 or epoch == trial.epochs
                   or now - trial.printed >= self.plain_every_s)
            if due:
                trial.printed = now
        self._reestimate()
        if due:
            self._line(f"{_who(trial)} epoch {epoch}/{trial.epochs or '?'}: "
                       f"{self.metric} {fmt.metric(trial.value)}, best {fmt.metric(trial.best)}, "
                       f"{fmt.value(round(trial.img_per_s or 0))} img/s, "
                       f"{fmt.duration(now - trial.started)}")

    def trial_ended(self, trial_id: str, status: str, reason: str = "",
                    log: str | None = None) -> None:
        """A trial ended: completed, stopped (by ASHA), failed, infeasible, diverged, oom.
        One that crashed gives the `log` of its error: its line then stays above the live
        view too."""
        with self._lock:
            trial = self.running.pop(trial_id, None)
            if trial is None:
                return
            trial.status, trial.reason, trial.ended = status, reason, self.clock()
            self.finished.append(trial)
        self._reestimate()
        best = f", best {self.metric} {fmt.metric(trial.best)}" if trial.best is not None else ""
        line = (f"{_who(trial)} {status} after {trial.epoch}/{trial.epochs or '?'} epochs"
                + best + (f": {reason}" if reason else "")
                + (f" (full log: {log})" if log else ""))
        if log:
            self.message(line)
        else:
            self._line(line)
        # the study's counts come with the next study_update; without those, from the events
        self._summary_due = True
        if self.counts is None:
            self._plain_summary()

    def trial_retried(self, trial_id: str, reason: str, log: str, attempt: int,
                      attempts: int) -> None:
        """A trial crashed and starts again from its last checkpoint: `attempt` of
        `attempts` retries. One line, which stays above the live view."""
        with self._lock:
            trial = self.running.get(trial_id)
        who = _who(trial) if trial else f"trial {trial_id}"
        self.message(f"{who} crashed: {reason}; retry {attempt} of {attempts} from its last "
                     f"checkpoint (full log: {log})")

    def message(self, text: str) -> None:
        """One line that stays: above the live view, or among the plain lines."""
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def study_update(self, counts: Mapping[str, int],
                     best: tuple[float, str, str] | None) -> None:
        """The study's trials by status (the leaderboard's, so a resumed study counts the
        trials of earlier runs) and its best so far: (value, trial id, point name)."""
        with self._lock:
            self.counts, self.best = dict(counts), best
            self._anchor = self.estimate(self.clock())  # the trials left may have changed
        if self._summary_due:
            self._plain_summary()
        if isinstance(self.live, _CellView):
            self.live.refresh()

    def _plain_summary(self) -> None:
        self._summary_due = False
        self._line(" · ".join(line.plain for line in self._summary()))

    # the estimate ---------------------------------------------------------------------------

    def time_left(self) -> tuple[float, float] | None:
        """(seconds left, mean seconds an epoch took): the time until the last trial ends,
        estimated; None before any epoch is measured.

        The estimate is made when something happens (a trial starts, reports an epoch or
        ends: see `estimate`) and counts down between, so it never counts upwards while
        nothing new is known; it is the last estimate less the time since it was made.
        """
        with self._lock:
            if self._anchor is None:
                self._anchor = self.estimate(self.clock())
            if self._anchor is None:
                return None
            left, epoch_s, at = self._anchor
        return max(0.0, left - (self.clock() - at)), epoch_s

    def estimate(self, now: float) -> tuple[float, float, float] | None:
        """(seconds left, mean seconds an epoch took, `now`) from what is known at `now`;
        None before any epoch is measured. The caller holds the lock.

        Each running trial is expected to train to its next rung and past each later one
        with chance 1/reduction_factor (`expected_epochs`) at its own measured epoch time
        (the mean of every trial's before its first epoch ends), less what its epoch under
        way has run so far (never below the epochs after it); the trials not started yet, the
        same from epoch 0 at the mean epoch time, plus the mean start-up. Trials run as many
        at once as `concurrency` (else the most seen running at once) allows (`makespan`).
        Trials that end early (infeasible, diverged) and ASHA's early promotions are not
        foreseen. A budget that ends the run sooner bounds it: the epochs left of
        `epoch_budget` at the mean epoch time on every slot, the seconds left of `time_budget`.
        """
        epochs = [s for t in (*self.running.values(), *self.finished) for s in t.epoch_s]
        if not epochs:
            return None
        epoch_s = sum(epochs) / len(epochs)
        startups = [t.startup_s for t in (*self.running.values(), *self.finished)
                    if t.startup_s is not None]
        startup_s = sum(startups) / len(startups) if startups else 0.0
        running = []
        for t in self.running.values():
            own = sum(t.epoch_s) / len(t.epoch_s) if t.epoch_s else epoch_s
            startup = 0.0 if t.epoch else startup_s
            since = now - (t.last if t.epoch else t.started)
            expected = self._expected(t.epoch, t.epochs)
            running.append(max(max(0.0, expected - 1) * own,
                               startup + expected * own - since))
        waiting = max(0, self.trials - self._finished_count() - len(self.running))
        new_trial = startup_s + self._expected(0, self.max_epochs) * epoch_s
        slots = max(1, self.concurrency or self.most_running, len(running))
        left, self._bound = makespan(running, [new_trial] * waiting, slots), ""
        if self.epoch_budget:
            by_epochs = max(0, self.epoch_budget - self.epochs_reported) * epoch_s / slots
            if by_epochs < left:
                left, self._bound = by_epochs, "the epoch budget"
        if self.time_budget:
            by_time = max(0.0, self.t0 + self.time_budget - now)
            if by_time < left:
                left, self._bound = by_time, "the time budget"
        return left, epoch_s, now

    def _reestimate(self) -> None:
        with self._lock:
            self._anchor = self.estimate(self.clock())

    def _expected(self, done: int, epochs: int | None) -> float:
        return expected_epochs(done, epochs or self.max_epochs or done, self.rungs,
                               self.reduction_factor)

    def _finished_count(self) -> int:
        if self.counts is not None:
            return sum(v for k, v in self.counts.items() if k != Status.RUNNING)
        return len(self.finished)

    # drawing --------------------------------------------------------------------------------

    def __rich_console__(self, console: Console, options):
        with self._lock:
            trials = [*self.running.values(), *self.finished[-FINISHED_ROWS:]]
        now = self.clock()
        value = fmt.formatter([v for t in trials for v in (t.value, t.best)],
                              decimals=fmt.METRIC_DECIMALS)
        speed = fmt.formatter([t.img_per_s for t in trials], scientific=False)
        rows = [(t.name, f"{t.epoch}/{t.epochs or '?'}", value(t.value), value(t.best),
                 speed(t.img_per_s), fmt.duration((t.ended or now) - t.started),
                 t.status + (f": {t.reason}" if t.reason else "")) for t in trials]
        header = ("trial", "epoch", self.metric, "best", "img/s", "time", "status")
        widths = [max(len(c) for c in column) for column in zip(header, *rows)]
        table = Table(box=None, padding=(0, 1), pad_edge=False, header_style="bold")
        for i, name in enumerate(header):
            last = i == len(header) - 1
            # the status and reason take what the other columns leave, cut short if need be
            table.add_column(name, justify="left" if i in (0, 6) else "right", no_wrap=True,
                             overflow="ellipsis", max_width=max(
                                 len(name), options.max_width - sum(widths[:-1]) - 2 * i)
                             if last else None)
        for row, t in zip(rows, trials):
            table.add_row(*row, style="dim" if t.ended is not None else None)
        yield table
        yield from self._summary()

    def _summary(self) -> list[Text]:
        return [self._study_line(), self._best_line(), self._estimate_line()]

    def _study_line(self) -> Text:
        counts = dict(self.counts or {})
        if self.counts is None:
            for t in self.finished:
                counts[t.status] = counts.get(t.status, 0) + 1
        counts[Status.RUNNING] = len(self.running)
        finished = sum(v for k, v in counts.items() if k != Status.RUNNING)
        line = Text.assemble(("hpo ", "bold"), (self.study, "cyan"),
                             f"  {finished}/{self.trials} finished · "
                             f"{counts[Status.RUNNING]} running")
        for status in Status:
            if status.ended and counts.get(status):
                line.append(f" · {counts[status]} {status}",
                            "yellow" if status.failure else None)
        return line

    def _best_line(self) -> Text:
        best, found = "best: none yet", self.best
        if found is None:  # no study_update yet: the best of the trials seen
            seen = [t for t in (*self.running.values(), *self.finished) if t.best is not None]
            top = max(seen, key=lambda t: sign(self.mode) * t.best, default=None)
            found = top and (top.best, top.trial_id, top.label)
        if found:
            value, trial, point = found
            best = (f"best {self.metric} {fmt.metric(value)} (trial {trial}"
                    f"{', ' + point if point else ''})")
        return Text(f"{best} · elapsed {fmt.duration(self.clock() - self.t0)}")

    def _estimate_line(self) -> Text:
        found = self.time_left()
        if found is None:
            return Text("time left: estimated once an epoch has been measured")
        left, epoch_s = found
        rungs = (f"ASHA's rungs at {', '.join(map(str, self.rungs))} of {self.max_epochs} "
                 "epochs" if self.rungs else "no ASHA rungs")
        if self._bound == "the time budget":
            return Text(f"time left ≈ {fmt.duration(left)} (the time budget ends the search "
                        "before its trials do)")
        if self._bound:
            return Text(f"time left ≈ {fmt.duration(left)} (the epoch budget: "
                        f"{max(0, self.epoch_budget - self.epochs_reported)} epochs left at "
                        f"{epoch_s:.1f} s/epoch)")
        return Text(f"time left ≈ {fmt.duration(left)} (estimate from {epoch_s:.1f} s/epoch "
                    f"and {rungs})")

    def _line(self, text: str) -> None:
        if not self.live_view:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def __enter__(self):
        if self.live:
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if self.live:
            return self.live.__exit__(*exc)
        return None


class _CellView:
    """The live view in a Jupyter cell: one display output, updated in place (Jupyter,
    JupyterLab, VS Code, Colab and nbclient all honour display updates) at most
    `refresh_per_second` times a second, when `refresh` is called."""

    def __init__(self, view, width: int, refresh_per_second: float,
                 clock: Callable[[], float]):
        self.view, self.width, self.clock = view, width, clock
        self.every, self.last, self.handle = 1 / refresh_per_second, -math.inf, None

    def _bundle(self) -> dict[str, str]:
        page = Console(file=io.StringIO(), record=True, width=self.width, color_system="standard",
                       force_terminal=True, force_jupyter=False)
        page.print(self.view)
        return {"text/plain": page.export_text(clear=False),
                "text/html": page.export_html(inline_styles=True, code_format=_CELL_HTML)}

    def refresh(self, force: bool = False) -> None:
        if self.handle is None or (not force and self.clock() - self.last < self.every):
            return
        self.last = self.clock()
        self.handle.update(self._bundle(), raw=True)

    def __enter__(self):
        from IPython.display import display

        self.handle = display(self._bundle(), raw=True, display_id=True)
        self.last = self.clock()
        return self

    def __exit__(self, *exc):
        self.refresh(force=True)
        return None


_CELL_HTML = ('<pre style="white-space:pre;overflow-x:auto;line-height:normal;font-family:'
              'Menlo,\'DejaVu Sans Mono\',consolas,\'Courier New\',monospace">{code}</pre>')


def _epoch_seconds(metrics: Mapping[str, Any]) -> float | None:
    if metrics.get("t_start") is not None and metrics.get("t_end") is not None:
        return float(metrics["t_end"]) - float(metrics["t_start"])
    return metrics.get("train_seconds")


def _who(trial: _Trial) -> str:
    return f"trial {trial.trial_id}" + (f" ({trial.label})" if trial.label else "")


