"""The progress of long work other than a search (a retrain, a folder classified, a report):
a bar per task on a terminal; where the output is a log, a line when a task starts, at most
one every `every_s` seconds while it runs, and one when it ends, so a log shows life.
"""

from __future__ import annotations

import time
from typing import Callable

from rich.console import Console


class Meter:
    """`with Meter(console) as meter:` then `task = meter.task("best seed 0", total=30)`,
    `meter.update(task, done, info)`, `meter.note(line)` for a line that stays."""

    def __init__(self, console: Console, every_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        self.console, self.every_s, self.clock = console, every_s, clock
        self.bar = None
        if console.is_terminal:
            from rich import progress

            self.bar = progress.Progress(
                progress.TextColumn("{task.description}"), progress.BarColumn(),
                progress.MofNCompleteColumn(), progress.TextColumn("{task.fields[info]}"),
                progress.TimeElapsedColumn(), console=console)
        self._tasks: dict[int, dict] = {}

    def __enter__(self) -> Meter:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()

    def task(self, name: str, total: int, unit: str = "") -> int:
        """A piece of work of `total` steps (`unit` names them in a log's lines)."""
        if self.bar is not None:
            return self.bar.add_task(name, total=total, info="")
        key = len(self._tasks)
        self._tasks[key] = {"name": name, "total": total, "unit": unit, "t0": self.clock(),
                            "said": self.clock()}
        self.note(f"{name}: started ({total} {unit})".replace(" )", ")"))
        return key

    def update(self, task: int, done: int, info: str = "") -> None:
        """`done` of the task's steps are done; `info` says how it goes."""
        if self.bar is not None:
            self.bar.update(task, completed=done, info=info)
            return
        t = self._tasks[task]
        now = self.clock()
        if done >= t["total"] or now - t["said"] >= self.every_s:
            t["said"] = now
            unit = f" {t['unit']}" if t["unit"] else ""
            self.note(f"{t['name']}: {done}/{t['total']}{unit}" + (f", {info}" if info else "")
                      + f" ({now - t['t0']:.0f} s)")

    def note(self, line: str) -> None:
        """A line that stays: above the bars, or in the log."""
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)
