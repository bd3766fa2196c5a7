"""`hpo leaderboard` (hpo/table.py) fits the terminal: the key columns, then the
hyperparameters that vary as far as the width allows, numbers formatted one way per column,
failures with their reasons; --all and --columns in more tables; --csv unformatted."""

import csv
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import begun, modules_loaded, write_trial
from hpo import views
from hpo.record import IMPORTANCES
from hpo.space import random_configs

ROOT = Path(__file__).parents[1]


def hpo(*args, cwd, columns: int | None = None):
    env = {**os.environ, **({"COLUMNS": str(columns)} if columns else {})}
    return subprocess.run([sys.executable, "-m", "hpo.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120, env=env)


REASON = ("the net shrinks the 32×32 input to nothing before stage 5: stages=5 with kernel 5 "
          "and padding 'valid' need an input of at least 48 pixels")


@pytest.fixture(scope="module")
def wide_study(tmp_path_factory, tiny_parquet):
    """A study's record as a CIFAR-10 search leaves it, written trial by trial: the space's
    starting points and random configs (dozens of varying hyperparameters), millions of
    parameters, a failed, an infeasible and a diverged trial; its views rebuilt from it."""
    plan, record = begun(tmp_path_factory.mktemp("cli") / "results", tiny_parquet,
                         space=ROOT / "spaces/cifar10.py")
    space = plan.space
    configs = [space.point(p) for p in space.starting_points] + random_configs(space, 11)
    values = [0.3535, 0.6123, 0.03332, 0.7071, 0.5, 0.4444, 0.2, 0.1, 0.6, 0.65, 0.55]
    for i, config in enumerate(configs):
        config = {**config, "epochs": 2}
        if i >= len(values):
            status, reason = [("infeasible", REASON), ("failed", "RuntimeError: worker died"),
                              ("diverged", "training loss became nan in epoch 2")][i - len(values)]
            write_trial(record, config, [{"epoch": 0, "status": status}], status=status,
                        reason=reason)
            continue
        seconds = 617.25 if i == 1 else 1.0
        write_trial(record, config, [
            {"epoch": e, "val_acc": values[i] * e / 2, "img_per_s": 1234.5, "t_start": e,
             "t_end": e + seconds, "params": 15_438_986 if i == 1 else 62_006 + 1000 * i}
            for e in (1, 2)])
    # what the end of a run keeps: which dimensions mattered (hpo.importance)
    record.set_meta(IMPORTANCES, {"lr": 0.5, "optimizer": 0.3, "aug_rotate": 0.2})
    views.rebuild(plan.folder, record)
    return plan.folder.path


@pytest.mark.parametrize("width", [80, 200])
def test_leaderboard_fits_the_terminal(wide_study, tmp_path, width):
    out = hpo("leaderboard", wide_study, cwd=tmp_path, columns=width)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert max(map(len, lines)) <= width and "…" not in out.stdout
    head = next(i for i, line in enumerate(lines) if line.lstrip().startswith("#  trial"))
    assert re.match(r" #  trial +point +status +val_acc  best ep +params  wall s", lines[head])
    if width == 200:  # the key columns leave room for hyperparameters
        assert re.search(r"wall s +\w", lines[head])
    board = pd.read_csv(wide_study / "leaderboard.csv")
    rows = {int(line.split()[0]): line for line in lines[head + 2: head + 12]}
    assert len(rows) == 10 and "14 trials, the top 10 shown" in " ".join(lines[:head])
    for rank, line in rows.items():
        row = board[board["rank"] == rank].iloc[0]
        assert f" {row['trial_id']} " in line and row["status"] in line
        if isinstance(row["point"], str):
            assert f" {row['point']} " in line  # whole, not cut short
    # one precision per column, thousands separators
    assert "0.7071" in rows[1] and " 0.3535 " in rows[8] and " 0.1000 " in rows[10]
    assert "15,438,986" in rows[3] and " 1,234" in rows[3] and "report000-final" in rows[3]
    # the hyperparameters that did not fit are named
    left = re.search(r"(\d+) more vary: ", out.stdout)
    assert left and int(left.group(1)) > (10 if width == 80 else 0)
    # failed and infeasible trials rank last; shown, they say why, whole
    assert "3 trials below these failed, were infeasible, diverged or ran out of memory " \
        "(--top 14 shows them" in " ".join(out.stdout.split())
    out = hpo("leaderboard", wide_study, "--top", "14", cwd=tmp_path, columns=width)
    assert max(map(len, out.stdout.splitlines())) <= width and "…" not in out.stdout
    text = " ".join(out.stdout.split())
    assert f"trial 11 infeasible: {REASON}" in text
    assert "trial 12 failed: RuntimeError: worker died" in text
    assert "trials below these" not in text


def test_leaderboard_all_and_chosen_columns_fit_in_more_tables(wide_study, tmp_path):
    out = hpo("leaderboard", wide_study, "--all", cwd=tmp_path, columns=80)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert max(map(len, lines)) <= 80 and "…" not in out.stdout
    assert "more vary" not in out.stdout
    headers = [line.split() for line in lines if line.lstrip().startswith("#  trial")]
    assert len(headers) > 2  # further tables, each led by rank and trial
    shown = {h for header in headers for h in header}
    assert {"aug_rotate", "lr", "weight_decay", "growth", "optimizer", "batch_size"} <= shown
    out = hpo("leaderboard", wide_study, "--columns", "aug_rotate,lr,reason", "--top", "14",
              cwd=tmp_path, columns=200)
    header = next(line for line in out.stdout.splitlines() if "#  trial" in line).split()
    assert header[-3:] == ["aug_rotate", "lr", "reason"] and "growth" not in header
    board = pd.read_csv(wide_study / "leaderboard.csv")
    assert " 0.0333 " in out.stdout  # under 0.3535: one precision per column
    # a float setting searched over whole values reads as integers, a learning rate at one
    # precision
    assert re.search(r" (0|10|20) ", out.stdout) and not re.search(r" (0|10|20)\.0 ",
                                                                  out.stdout)
    assert re.search(r"\de-0\d", out.stdout) or board["lr"].min() >= 1e-3
    out = hpo("leaderboard", wide_study, "--columns", "lrr", cwd=tmp_path)
    assert out.returncode == 2 and "has no column 'lrr' (did you mean lr?)" in out.stderr


def test_leaderboard_csv_is_the_file_unformatted(wide_study, tmp_path):
    out = hpo("leaderboard", wide_study, "--csv", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout == (wide_study / "leaderboard.csv").read_text()
    out = hpo("leaderboard", wide_study, "--csv", "--top", "2", "--columns", "lr,reason",
              cwd=tmp_path)
    rows = list(csv.reader(io.StringIO(out.stdout)))
    assert rows[0] == ["rank", "trial_id", "point", "status", "val_acc", "best_epoch",
                       "params", "wall_s", "lr", "reason"]
    assert len(rows) == 3 and rows[1][1] == "3" and "," not in rows[2][6]


def test_the_columns_that_mattered_come_first_and_the_rest_is_named_in_one_line(wide_study,
                                                                                tmp_path):
    out = hpo("leaderboard", wide_study, cwd=tmp_path, columns=120)
    lines = out.stdout.splitlines()
    header = next(line for line in lines if line.lstrip().startswith("#  trial")).split()
    # after the key columns: the study's most important dimensions, in their order
    after = header[header.index("wall") + 2:]
    assert after[:3] == ["lr", "optimizer", "aug_rotate"], header
    footer = [line for line in lines if "more vary:" in line]
    assert len(footer) == 1 and len(footer[0]) <= 120
    assert footer[0].endswith("(--all shows them, --columns a,b picks)")


@pytest.mark.parametrize("options", [[], ["--all"], ["--columns", "lr,reason", "--top", "14"],
                                     ["--csv"]])
def test_hpo_leaderboard_imports_neither_pandas_nor_numpy(wide_study, options):
    # importing pandas (and numpy under it) was most of a second of every leaderboard shown
    argv = ["leaderboard", str(wide_study), *options]
    loaded = modules_loaded(f"from hpo.cli import main; assert main({argv!r}) == 0")
    assert not loaded & {"pandas", "numpy", "torch", "ray", "optuna", "matplotlib"}
