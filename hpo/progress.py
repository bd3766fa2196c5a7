"""The one compact view of a running study in the terminal (rich), instead of Ray's tables."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections import Counter
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text


class Progress:
    """A live panel: trials by status, the best so far, elapsed time. Use as a context manager."""

    def __init__(self, console: Console, study: str, trials: int, metric: str):
        self.console, self.study, self.trials, self.metric = console, study, trials, metric
        self.counts: Counter = Counter()
        self.best: tuple[float, str, str] | None = None  # value, trial id, point name
        self.t0 = time.time()
        self.live = Live(self._render(), console=console, refresh_per_second=2, transient=False)

    def update(self, counts: Counter, best: tuple[float, str, str] | None) -> None:
        self.counts, self.best = counts, best
        self.live.update(self._render())

    def _render(self):
        c = self.counts
        finished = sum(v for k, v in c.items() if k != "running")
        head = Text.assemble(
            ("hpo ", "bold"), (self.study, "cyan"),
            f"  {finished}/{self.trials} finished · {c['running']} running · "
            f"{c['completed']} completed · {c['stopped']} stopped early",
        )
        other = {k: v for k, v in c.items() if k not in ("running", "completed", "stopped")}
        if other:
            head.append(" · " + " · ".join(f"{v} {k}" for k, v in sorted(other.items())), "yellow")
        table = Table.grid(padding=(0, 2))
        elapsed = time.time() - self.t0
        best = "—"
        if self.best:
            value, trial, point = self.best
            best = f"{self.metric} {value:.4f}  (trial {trial}{', ' + point if point else ''})"
        table.add_row("best so far", best)
        table.add_row("elapsed", f"{int(elapsed // 60)}m {elapsed % 60:04.1f}s")
        return Group(head, table)

    def __enter__(self):
        self.live.__enter__()
        return self

    def __exit__(self, *exc):
        self.live.update(self._render())
        return self.live.__exit__(*exc)


@contextlib.contextmanager
def output_to(log_path: Path):
    """Send everything written to fds 1 and 2 (Ray's processes included) to `log_path`, and
    yield a rich Console on the original terminal for our own view."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(saved_out), "w", buffering=1)
    log = open(log_path, "ab", buffering=0)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    try:
        yield Console(file=terminal)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        for fd in (saved_out, saved_err):
            os.close(fd)
        log.close()
        terminal.close()
