"""The live view, fed trial events by hand (no Ray): rows, widths, plain lines, the estimate;
and once, a real search under a pseudo-terminal."""

import re
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

from conftest import modules_loaded, run_in_terminal
from hpo.estimate import expected_epochs, makespan
from hpo.live import Progress

ROOT = Path(__file__).parents[1]
REASON = "the net shrinks the 32×32 input to nothing before stage 5, so no layer can follow it"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def epoch(e: int, value: float, end: float, seconds: float = 2.0, speed: float = 1234.5):
    return {"epoch": e, "epochs": 4, "val_acc": value, "img_per_s": speed,
            "t_start": end - seconds, "t_end": end, "status": "running"}


def scenario(console: Console, clock: Clock, **budgets) -> Progress:
    """8 trials, ASHA rungs at 1 and 2 of 4 epochs keeping half: one trial stopped after
    its first epoch, one infeasible, one running at epoch 2, five not started."""
    progress = Progress(console, "tiny", 8, "val_acc", "max", max_epochs=4, rungs=[1, 2],
                        reduction_factor=2, clock=clock, **budgets)
    progress.trial_started("0", "too-slow", 4)
    progress.trial_started("1", "", 4)
    clock.now += 3  # 1 s of start-up, then a 2 s epoch
    progress.trial_result("0", epoch(1, 0.1, clock.now))
    progress.trial_result("1", epoch(1, 0.35, clock.now, speed=2234.5))
    progress.trial_ended("0", "stopped")
    progress.study_update({"running": 1, "stopped": 1}, (0.35, "1", ""))
    progress.trial_started("2", "", 4)
    progress.trial_result("2", {"epoch": 0, "epochs": 4, "status": "infeasible",
                                "reason": REASON})
    progress.trial_ended("2", "infeasible", REASON)
    progress.study_update({"running": 1, "stopped": 1, "infeasible": 1}, (0.35, "1", ""))
    clock.now += 2
    progress.trial_result("1", epoch(2, 0.3, clock.now, speed=2234.5))
    clock.now += 1
    return progress


def frame(progress: Progress, width: int) -> list[str]:
    out = StringIO()
    Console(file=out, width=width, color_system=None).print(progress)
    return out.getvalue().splitlines()


def test_live_view_rows_fit_80_columns():
    progress = scenario(Console(file=StringIO()), Clock())
    lines = frame(progress, 80)
    assert max(map(len, lines)) <= 80
    assert lines[0].split() == ["trial", "epoch", "val_acc", "best", "img/s", "time", "status"]
    # running first: epoch of epochs, current and best value, speed, time since it started
    assert lines[1].split() == ["1", "2/4", "0.3000", "0.3500", "2,234", "6s", "running"]
    # then the last finished: the starting point by name, the reason cut to the width
    assert lines[2].split() == ["too-slow", "1/4", "0.1000", "0.1000", "1,234", "3s", "stopped"]
    assert lines[3].startswith("2 ") and "infeasible: the net shrinks" in lines[3]
    assert lines[3].endswith("…") and len(lines[3]) == 80
    assert lines[4] == "hpo tiny  2/8 finished · 1 running · 1 stopped · 1 infeasible"
    assert lines[5] == "best val_acc 0.3500 (trial 1) · elapsed 6s"
    assert lines[6].startswith("time left ≈ 14s (estimate from 2.0 s/epoch and ASHA's rungs")
    assert len(lines) == 7


def test_live_view_shows_whole_reasons_when_wide_and_fits_when_narrow():
    progress = scenario(Console(file=StringIO()), Clock())
    wide = frame(progress, 200)
    assert wide[3].endswith(REASON) and not any("…" in line for line in wide)
    assert "time left ≈ 14s (estimate from 2.0 s/epoch and ASHA's rungs at 1, 2 of 4 epochs)" \
        in wide
    narrow = frame(progress, 50)
    assert max(map(len, narrow)) <= 50
    assert narrow[1].split()[:3] == ["1", "2/4", "0.3000"]


def test_time_left_from_measured_epochs_and_asha_rungs():
    clock = Clock()
    progress = scenario(Console(file=StringIO()), clock)
    # at trial 1's last report: epochs took 2 s (three measured), start-up 1 s; at most 2
    # trials ran at once. Trial 1, at epoch 2 of 4 past both rungs, has 2 epochs to go: 4 s.
    # Each of the 5 trials not started: 1 s + 2 expected epochs (1 + 1/2 + 2/4) × 2 s = 5 s.
    # Two slots, free after 4 s and 0 s: 0→5→10→15 and 4→9→14: the last ends after 15 s,
    # and 1 s has gone by since
    assert progress.time_left() == (14.0, 2.0)
    # nothing new for 9 s: the estimate counts down, it never counts up
    clock.now += 9
    assert progress.time_left()[0] == 5.0
    # news: trial 1's third epoch took 10 s; its fourth is expected to take as long
    progress.trial_result("1", epoch(3, 0.4, clock.now, seconds=10.0))
    left, epoch_s = progress.time_left()
    assert epoch_s == 4.0 and left > 5.0
    assert Progress(Console(file=StringIO()), "s", 4, "val_acc").time_left() is None


def test_time_left_ends_where_a_budget_ends_the_search():
    # the scenario's trials need 14 s more (above); 3 epochs were reported by 1005 (2 s
    # each, two slots)
    clock = Clock()
    progress = scenario(Console(file=StringIO()), clock, epoch_budget=6)
    assert progress.time_left() == (2.0, 2.0)  # 3 epochs left on 2 slots: 3 s, 1 s ago
    assert "the epoch budget: 3 epochs left at 2.0 s/epoch" in "\n".join(frame(progress, 100))
    clock = Clock()
    progress = scenario(Console(file=StringIO()), clock, time_budget=10.0)
    assert progress.time_left() == (4.0, 2.0)  # began at 1000, estimated at 1005, now 1006
    assert "the time budget ends the search" in "\n".join(frame(progress, 100))
    clock = Clock()  # a budget the trials end before changes nothing
    progress = scenario(Console(file=StringIO()), clock, epoch_budget=100, time_budget=60.0)
    assert progress.time_left() == (14.0, 2.0)
    assert "ASHA's rungs at 1, 2 of 4 epochs" in "\n".join(frame(progress, 100))


def test_time_left_never_counts_up_and_is_right_within_a_factor_of_two():
    # a recorded search: 12 trials, two at once, 1 s of start-up each, epochs of 1.5-3 s;
    # ASHA (rungs at 1 and 2 of 4, keeping half) stopped six after one epoch, three after
    # two, and three trained all four
    import random

    rng = random.Random(0)
    lengths = [1, 1, 2, 4, 1, 2, 1, 4, 1, 2, 4, 1]
    events, slots, seconds = [], [0.0, 0.0], {}
    for n, length in enumerate(lengths):
        slot = min(range(2), key=lambda i: slots[i])
        t, seconds[n] = slots[slot], rng.uniform(1.5, 3.0)
        events.append((t, "start", n, 0))
        t += 1.0
        for e in range(1, length + 1):
            t += seconds[n]
            events.append((t, "epoch", n, e))
        events.append((t, "end", n, length))
        slots[slot] = t
    end = max(t for t, *_ in events)
    events.sort(key=lambda e: (e[0], e[1] != "end"))
    clock = Clock()
    clock.now = 0.0
    progress = Progress(Console(file=StringIO()), "rec", 12, "val_acc", max_epochs=4,
                        rungs=[1, 2], reduction_factor=2, concurrency=2, clock=clock)
    last, ratios = None, []
    for t, kind, n, e in events:
        # between events the estimate only counts down
        for step in (0.25, 0.5):
            if clock.now + step < t:
                clock.now += step
                now = progress.time_left()
                if last is not None and now is not None:
                    assert now[0] <= last[0] + 1e-9
                last = now
        clock.now = t
        if kind == "start":
            progress.trial_started(str(n), "", 4)
        elif kind == "epoch":
            progress.trial_result(str(n), epoch(e, 0.5, t, seconds=seconds[n]))
        else:
            progress.trial_ended(str(n), "completed" if e == 4 else "stopped")
        last = progress.time_left()
        measured = all(trial.epoch for trial in progress.running.values())
        if last is not None and measured and end - t > 5:
            ratios.append(last[0] / (end - t))
    assert ratios and min(ratios) >= 0.5 and max(ratios) <= 2.0, (min(ratios), max(ratios))


def test_expected_epochs_and_makespan():
    # the top 1/3 go on at epochs 2, 6 and 18 of 30
    assert expected_epochs(0, 30, [2, 6, 18], 3) == pytest.approx(2 + 4 / 3 + 12 / 9 + 12 / 27)
    assert expected_epochs(6, 30, [2, 6, 18], 3) == pytest.approx(12 + 12 / 3)
    assert expected_epochs(20, 30, [2, 6, 18], 3) == 10
    assert expected_epochs(0, 4, [], 3) == 4
    assert makespan([3.0, 1.0], [4.0, 4.0], 2) == 7.0
    assert makespan([], [5.0] * 4, 3) == 10.0
    assert makespan([2.0], [], 4) == 2.0


def test_plain_lines_when_not_a_terminal():
    out = StringIO()
    console = Console(file=out, width=80)
    assert not console.is_terminal
    with scenario(console, Clock()):
        pass
    text = out.getvalue()
    assert "\x1b" not in text and "\r" not in text
    assert text.splitlines() == [
        "trial 0 (too-slow) started: 4 epochs",
        "trial 1 started: 4 epochs",
        "trial 0 (too-slow) epoch 1/4: val_acc 0.1000, best 0.1000, 1,234 img/s, 3s",
        "trial 1 epoch 1/4: val_acc 0.3500, best 0.3500, 2,234 img/s, 3s",
        "trial 0 (too-slow) stopped after 1/4 epochs, best val_acc 0.1000",
        # the study's line follows the study's counts, which come after the trial's end
        "hpo tiny  1/8 finished · 1 running · 1 stopped · best val_acc 0.3500 (trial 1) · "
        "elapsed 3s · time left ≈ 19s (estimate from 2.0 s/epoch and ASHA's rungs at 1, 2 of "
        "4 epochs)",
        "trial 2 started: 4 epochs",
        f"trial 2 infeasible after 0/4 epochs: {REASON}",
        "hpo tiny  2/8 finished · 1 running · 1 stopped · 1 infeasible · best val_acc 0.3500 "
        "(trial 1) · elapsed 3s · time left ≈ 15s (estimate from 2.0 s/epoch and ASHA's rungs "
        "at 1, 2 of 4 epochs)",
    ]  # trial 1's epoch 2 came 2 s after its first line: held back, as it is not its last


def test_plain_epoch_lines_are_throttled_per_trial():
    out, clock = StringIO(), Clock()
    progress = Progress(Console(file=out), "s", 1, "val_loss", "min", max_epochs=30,
                        plain_every_s=10, clock=clock)
    progress.trial_started("7", "", 30)
    for e in range(1, 31):
        clock.now += 3
        progress.trial_result("7", {**epoch(e, 2.0 - e / 100, clock.now), "epochs": 30,
                                    "val_loss": 2.0 - e / 100})
    epochs = [int(m) for m in re.findall(r"epoch (\d+)/30", out.getvalue())]
    # the first, then one at least 10 s after the last printed, and the last
    assert epochs == [1, 5, 9, 13, 17, 21, 25, 29, 30]
    assert "val_loss 1.7000, best 1.7000" in out.getvalue()  # min: the lowest is the best


def test_a_trial_started_again_keeps_its_best():
    clock = Clock()
    progress = Progress(Console(file=StringIO()), "s", 2, "val_acc", max_epochs=4, clock=clock)
    progress.trial_started("a", "", 4)
    progress.trial_result("a", epoch(1, 0.5, clock.now))
    progress.trial_result("a", epoch(2, 0.6, clock.now))
    progress.trial_ended("a", "failed", "worker died")
    progress.trial_started("a", "", 4)  # Tune retries it from its checkpoint
    progress.trial_result("a", epoch(3, 0.55, clock.now))
    assert [t.trial_id for t in progress.finished] == []
    assert progress.running["a"].best == 0.6 and progress.running["a"].epoch_s == [2.0] * 3


def test_progress_imports_no_ray():
    assert "ray" not in modules_loaded("import hpo.live, hpo.capture, hpo.estimate")


@pytest.mark.e2e
def test_search_under_a_terminal_shows_trial_rows_and_time_left(tiny_parquet, tmp_path):
    screen = run_in_terminal([sys.executable, "-m", "hpo.cli", "search",
                              ROOT / "tests/spaces/tiny.py", "--data", tiny_parquet,
                              "--num-cpus", 2, "--trials", 4, "--max-epochs", 2],
                             cwd=tmp_path)
    assert "\x1b[" in screen  # redrawn in place: a live view, not lines
    # a redraw moves the cursor up and erases lines: each of those starts a line here
    text = re.sub(r"\x1b\[\d*[AK]", "\n", screen.replace("\r", ""))
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    # a row per trial: its id or starting point, epoch of epochs, its metric
    assert re.search(r"^too-slow +[0-2]/2 ", text, re.M)
    assert re.search(r"^\w+ +[12]/2 +\d\.\d{4} +\d\.\d{4} +[\d,]+ +\d+s +\w+", text, re.M)
    assert re.search(r"^time left ≈ .* \(estimate from [\d.]+ s/epoch", text, re.M)
    assert "hpo tiny  4/4 finished · 0 running" in text
    assert max(len(line) for line in text.splitlines()) <= 100  # fits the terminal



RAY_LINES = ("Configuration for experiment", "TensorBoard", "NaN or Inf", "Started a local Ray",
             "Trial task failed", "Traceback", "ERROR", "WARNING", "wandb", "mlflow", "/tmp/ray")


def screen_text(screen: str) -> str:
    """What a terminal shows of `screen`, one line per drawn line (redraws included)."""
    text = re.sub(r"\x1b\[\d*[AK]", "\n", screen.replace("\r", ""))
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


@pytest.mark.e2e
def test_nothing_from_ray_reaches_the_terminal_and_a_crash_is_one_line(noisy_study):
    cwd, folder, screen = noisy_study
    text = screen_text(screen)
    assert "hpo noisy  3/3 finished · 0 running · 1 completed · 1 failed · 1 diverged" in text
    for line in RAY_LINES:
        assert line not in text, line
    # the crash: one line per attempt, each naming the file with the whole traceback
    log = "results/noisy/ray/trial-0001/error.txt"
    assert len(re.findall(rf"^trial 1 crashed: RuntimeError: simulated crash in the trial "
                          rf"process; retry [12] of 2 from its last checkpoint \(full log: "
                          rf"{log}\)$", text, re.M)) == 2
    assert re.search(rf"^trial 1 failed after 0/2 epochs: RuntimeError: simulated crash in "
                     rf"the trial process \(full log: {log}\)$", text, re.M)
    assert (cwd / log).read_text().count("simulated crash in the trial process") >= 3
    # the divergence shows as a status, its NaN only in Tune's TensorBoard log and ray.log
    board = pd.read_csv(folder / "leaderboard.csv").set_index("point")
    assert board.loc["diverges", "status"] == "diverged"
    assert "training loss became nan" in board.loc["diverges", "reason"]
    assert re.search(r"^diverges +\d/2 .* diverged: training loss became nan", text, re.M), [
        line for line in text.splitlines() if "diverge" in line]
    ray_log = (folder / "ray.log").read_text()
    for line in ("Started a local Ray instance", "Trial task failed", "NaN or Inf found"):
        assert line in ray_log, line
    # `tensorboard --logdir results/noisy/ray` finds every trial's events
    assert len(list((folder / "ray").glob("trial-*/events.out.tfevents.*"))) >= 3


def test_output_goes_to_the_log_or_with_verbose_to_both(tmp_path):
    import logging

    from hpo.capture import output_to

    def noisy(tag: str) -> None:
        print(f"{tag} print")  # Python's sys.stdout
        logging.getLogger("noisy").warning(f"{tag} logging")  # a handler bound to stderr
        subprocess.run(["sh", "-c", f"echo {tag} process; echo {tag} process >&2"],
                       check=True)  # a child process, on fds 1 and 2, as Ray's processes

    logger = logging.getLogger("noisy")
    logger.addHandler(logging.StreamHandler(sys.stderr))
    logger.propagate = False
    try:
        for verbose in (False, True):
            shown = StringIO()
            log = tmp_path / f"verbose-{verbose}.log"
            with output_to(log, Console(file=shown, width=100), verbose) as console:
                noisy("ray")
                console.print("hpo view")
            logged = log.read_text()
            for tag in ("print", "logging", "process"):
                assert logged.count(f"ray {tag}") == (2 if tag == "process" else 1)
            assert "hpo view" in shown.getvalue() and "hpo view" not in logged
            assert ("ray process" in shown.getvalue()) is verbose
            assert ("ray logging" in shown.getvalue()) is verbose
    finally:
        logger.handlers.clear()
        logger.propagate = True
