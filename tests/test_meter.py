"""Long work shows life: a bar on a terminal; in a log, a line when a task starts, now and
then while it runs, and when it ends."""

from io import StringIO

from rich.console import Console

from hpo.meter import Meter


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_log_gets_a_line_at_the_start_now_and_then_and_at_the_end():
    out, clock = StringIO(), Clock()
    with Meter(Console(file=out, width=200), every_s=30, clock=clock) as meter:
        task = meter.task("best seed 0", 10, "epochs")
        for done in range(1, 11):
            clock.now += 10
            meter.update(task, done, f"train loss {1 / done:.3f}")
    lines = out.getvalue().splitlines()
    assert lines[0] == "best seed 0: started (10 epochs)"
    # every 30 s, and the last
    assert lines[1:] == ["best seed 0: 3/10 epochs, train loss 0.333 (30 s)",
                         "best seed 0: 6/10 epochs, train loss 0.167 (60 s)",
                         "best seed 0: 9/10 epochs, train loss 0.111 (90 s)",
                         "best seed 0: 10/10 epochs, train loss 0.100 (100 s)"]


def test_a_terminal_gets_a_bar_and_no_lines():
    out = StringIO()
    console = Console(file=out, width=100, force_terminal=True)
    with Meter(console) as meter:
        task = meter.task("report", 3, "sections")
        meter.update(task, 3, "done")
    assert meter.bar is not None and "3/3" in out.getvalue() and "started" not in out.getvalue()
