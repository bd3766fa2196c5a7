"""`hpo`: thin commands over the package's functions. Each prints with rich and exits 2 with
one line on bad input."""

from __future__ import annotations

import argparse
import csv
import difflib
import json
import os
import sys
from pathlib import Path

import pandas as pd
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from hpo import fmt
from hpo.space import SpaceError, load_space

# the terminal's width (or COLUMNS); piped output is not cropped to 80 columns: the table goes
# to a file or another program whole
console = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 240)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # one line, not argparse's usage block: the user sees what is wrong at once
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def cmd_search(args) -> int:
    """Search a space file; results go to results/<study>/."""
    from hpo.search import SearchOptions, StudyError, run_search

    options = SearchOptions(
        data=args.data, trials=args.trials, max_epochs=args.max_epochs,
        grace_period=args.grace_period, name=args.name,
        gpus_per_trial=args.gpus_per_trial, cpus_per_trial=args.cpus_per_trial,
        trials_per_gpu=args.trials_per_gpu,
        fraction=args.fraction, address=args.address, storage_path=args.storage_path,
        fresh=args.fresh, storage=args.storage,
        num_cpus=args.num_cpus,
        concurrency=args.concurrency, seed=args.seed, results=Path(args.results))
    try:
        study = run_search(load_space(args.space), options)
    except (SpaceError, StudyError) as exc:
        return _fail(exc)
    if args.final and (study / "best.json").is_file():
        from hpo.final import retrain
        from hpo.study import load_study_data

        _, data = load_study_data(study)
        config = json.loads((study / "best.json").read_text())
        retrain(config, data, range(args.seeds), study / "final", "best", console)
    console.print(f"next: hpo leaderboard {study}   ·   hpo export {study} --rank 1 -o best.json")
    return 0


def cmd_train(args) -> int:
    """Retrain a config on train + validation for its full epochs, test once per seed."""
    from hpo.data import load_dataset
    from hpo.final import retrain
    from hpo.study import load_study_data

    target = Path(args.target)
    if target.is_dir():
        space, data = load_study_data(target, args.data, args.fraction)
        out = target / "final"
        jobs = [(n, space.point(n)) for n in args.point] or [
            ("best", json.loads((target / "best.json").read_text()))]
    else:
        if not target.is_file():
            raise FileNotFoundError(f"{target}: no such config file or study folder")
        if not args.data:
            raise ValueError(f"{target}: pass --data for a config outside a study")
        data = load_dataset(args.data, fraction=args.fraction or 1.0)
        out = Path(args.out or Path("results") / f"final-{target.stem}")
        jobs = [("best", json.loads(target.read_text()))]
    for name, config in jobs:
        if args.epochs:
            config = {**config, "epochs": args.epochs}
        retrain(config, data, range(args.seeds), Path(args.out or out), name, console)
    return 0


def cmd_leaderboard(args) -> int:
    """Print a study's leaderboard to fit the terminal: the key columns, then the
    hyperparameters that vary, as many as fit (--all, --columns to choose); --csv for pipes."""
    from hpo.leaderboard import FAILURES, read_leaderboard

    board = read_leaderboard(args.study)
    chosen = [c.strip() for c in (args.columns or "").split(",") if c.strip()]
    if unknown := [c for c in chosen if c not in board.columns]:
        near = difflib.get_close_matches(unknown[0], board.columns, n=3)
        raise ValueError(f"--columns: {args.study} has no column {unknown[0]!r}" + (
            f" (did you mean {' or '.join(near)}?)" if near else
            " (see the header of its leaderboard.csv)"))
    if args.csv:
        _print_csv(Path(args.study), args.top, chosen)
        return 0
    shown = board.head(args.top or TOP)
    key = [c for c in _key_columns(board.columns)
           if c != "point" or shown[c].notna().any()]  # no starting point: no column for it
    first = list(board.columns).index("node") + 1
    # the hyperparameters that differ between the rows shown, not the 50 constant ones; those
    # most rows have first (a starting point's explicit widths, blank elsewhere, last)
    varying = sorted((c for c in board.columns[first:] if shown[c].nunique(dropna=False) > 1),
                     key=lambda c: shown[c].isna().sum())
    rest = [c for c in chosen if c not in key] if chosen else varying
    pages, left_out = _pages(shown, key, rest, console, every=args.all or bool(chosen))
    console.print(f"[bold]{args.study}[/]: {len(board)} trials" + (
        f", the top {len(shown)} shown (--top N for more)" if len(shown) < len(board) else ""),
        highlight=False)
    for page in pages:
        console.print(_table(shown, page))
    if left_out:
        console.print(f"{len(left_out)} more hyperparameters vary: {', '.join(left_out)} "
                      "(--all shows them all, --columns a,b picks)", highlight=False)
    failed = shown[shown["status"].isin(FAILURES) & shown["reason"].notna()]
    for _, row in failed.iterrows() if "reason" not in chosen else ():
        console.print(f"trial {row['trial_id']} {row['status']}: {row['reason']}",
                      markup=False, highlight=False)
    # they have no value, so they rank last: say they exist even when the top leaves them out
    if hidden := int(board["status"].isin(FAILURES).sum()) - len(failed):
        console.print(f"{hidden} trials below these failed, were infeasible, diverged or ran "
                      f"out of memory (--top {len(board)} shows them with their reasons)",
                      highlight=False)
    return 0


TOP = 10
HEADERS = {"rank": "#", "trial_id": "trial", "best_epoch": "best ep",
           "epochs_trained": "epochs", "wall_s": "wall s", "img_per_s": "img/s"}


def _key_columns(columns) -> list[str]:
    """The columns every view of a leaderboard starts with (columns[4] is the metric)."""
    return [c for c in ("rank", "trial_id", "point", "status", columns[4], "pareto",
                        "best_epoch", "params", "wall_s") if c in columns]


def _pages(shown: pd.DataFrame, key: list[str], rest: list[str], console: Console,
           every: bool) -> tuple[list[list[str]], list[str]]:
    """The columns of each table to print, each table as wide as the console at most: the key
    columns and the first of `rest` that fit, then (`every`) further tables of rank, trial and
    the rest; and the columns of `rest` left out."""
    pages, page, rest = [], list(key), list(rest)
    while True:
        for c in list(rest):
            size = _measure(shown, page + [c], console)
            if (size.minimum if _wraps(shown[c]) else size.maximum) <= console.width:
                page.append(c)
                rest.remove(c)
        if len(page) == 2 and rest:  # one too wide for any table: alone, folded
            page.append(rest.pop(0))
        pages.append(page)
        if not every or not rest:
            return pages, rest
        page = ["rank", "trial_id"]


def _table(shown: pd.DataFrame, columns: list[str]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0),
                  header_style="bold")
    cells = []
    for c in columns:
        values = shown[c].tolist()
        cells.append(fmt.column(c, values))
        numeric = fmt.kind_of(c, values) in ("int", "float")
        # values are never cut short: a sentence wraps onto more lines, a value never does
        table.add_column(HEADERS.get(c, c), justify="right" if numeric else "left",
                         no_wrap=not _wraps(shown[c]), overflow="fold")
    for row in zip(*cells):
        table.add_row(*row)
    return table


def _wraps(values: pd.Series) -> bool:
    """Whether a column holds sentences (a reason), which may wrap onto more lines."""
    return values.map(lambda v: isinstance(v, str) and " " in v).any()


def _measure(shown: pd.DataFrame, columns: list[str], console: Console) -> Measurement:
    unbounded = console.options.update_width(1_000_000)  # its natural width, not the console's
    return Measurement.get(console, unbounded, _table(shown, columns))


def _print_csv(study: Path, top: int | None, chosen: list[str]) -> None:
    """The leaderboard's rows as the file has them (no formatting), all of them or the
    `top`, every column or the key ones and `chosen`."""
    path = study / "leaderboard.csv" if study.is_dir() else study
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1: 1 + top if top else None]
    keep = list(range(len(header)))
    if chosen:
        key = _key_columns(header)
        keep = [header.index(c) for c in key + [c for c in chosen if c not in key]]
    out = csv.writer(sys.stdout, lineterminator="\n")
    for row in [header, *body]:
        out.writerow([row[i] for i in keep])


def cmd_report(args) -> int:
    """Write results/<study>/report.html: curves, importances, Pareto front, final results."""
    from hpo.report import write_report

    console.print(f"report → {write_report(args.study)}")
    return 0


def cmd_export(args) -> int:
    """Write the complete config of the trial at --rank, which `hpo train` and run_trial take."""
    from hpo.leaderboard import config_at_rank, write_json

    config = config_at_rank(args.study, args.rank)
    if args.output == "-":
        print(json.dumps(config, indent=2))
    else:
        write_json(Path(args.output), config)
        console.print(f"rank {args.rank} config → {args.output}")
    return 0


def cmd_show(args) -> int:
    """Print a space file's dimensions and its starting points with their sizes."""
    from hpo.config import complete
    from hpo.model import Infeasible, build_model, count_parameters

    space = load_space(args.space)
    table = Table(title=f"{space.path}: {space.trials} trials · {space.max_epochs} max epochs · "
                  f"ASHA grace {space.grace_period}, η {space.reduction_factor:g} · "
                  f"{space.mode} {space.metric}", header_style="bold")
    for c in ("dimension", "values", "conditional"):
        table.add_column(c)
    for name, dim in space.dimensions.items():
        if hasattr(dim, "describe"):
            table.add_row(name, dim.describe(), "yes" if dim.when else "")
        else:
            table.add_row(name, f"= {dim!r}", "")
    console.print(table)
    shape = (space.channels or 3, space.image_size or 32, space.image_size or 32)
    points = Table(title=f"starting points (input {shape[0]}×{shape[1]}×{shape[2]}, "
                   f"{args.classes} classes)", header_style="bold")
    points.add_column("name")
    points.add_column("trainable parameters", justify="right")
    for name in space.starting_points:
        try:
            model = build_model(complete(space.point(name)), shape, args.classes)
            n = f"{count_parameters(model):,}"
        except Infeasible as exc:
            n = f"infeasible: {exc}"
        points.add_row(name, n)
    console.print(points)
    return 0


def _fail(exc: Exception) -> int:
    print(f"hpo: error: {exc}", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hpo", description="Hyperparameter search for image-classification "
                     "CNNs: Optuna TPE + ASHA on Ray Tune.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("search", help=cmd_search.__doc__, description=cmd_search.__doc__)
    p.add_argument("space", help="a space file, e.g. spaces/cifar10.py")
    p.add_argument("--data", help="dataset: a Parquet folder (Hugging Face layout), a torchvision "
                   "CIFAR-10 folder, torchvision:DIR to download, or a folder of class folders")
    p.add_argument("--trials", type=int, help="trials to run (overrides the space file)")
    p.add_argument("--max-epochs", type=int, help="epochs of a full trial; ASHA's max_t")
    p.add_argument("--grace-period", type=int, help="epochs before ASHA may stop a trial")
    p.add_argument("--name", help="study name (default: the space file's name); an existing "
                   "study of that name is resumed")
    p.add_argument("--fresh", action="store_true",
                   help="start over under a new name (<name>-2, ...) instead of resuming")
    p.add_argument("--storage", help="Optuna storage URL, e.g. postgresql://... for a cluster "
                   "(default: results/<study>/study.db)")
    p.add_argument("--gpus-per-trial", type=float,
                   help="GPU fraction per trial (default: from each trial's predicted memory, "
                        "calibrated on the GPU)")
    p.add_argument("--trials-per-gpu", type=int, default=4,
                   help="at most this many trials share a GPU when hpo picks (default 4)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (default 1)")
    p.add_argument("--fraction", type=float, default=1.0,
                   help="train on this fixed-seed fraction of the training set, for quick runs")
    p.add_argument("--address", help="join a running Ray cluster (e.g. auto); default: local Ray")
    p.add_argument("--storage-path", help="where trials write results and checkpoints: a "
                   "path every node shares, or s3://... / gs://... (default: the study folder)")
    p.add_argument("--num-cpus", type=int, help="CPUs the local Ray may use (default: all)")
    p.add_argument("--concurrency", type=int, help="trials at once (default: as resources allow)")
    p.add_argument("--seed", type=int, default=0, help="seed of TPE and of the data split")
    p.add_argument("--results", default="results", help="folder of study folders")
    p.add_argument("--final", action="store_true",
                   help="then retrain the best config on train + val and test it (hpo train)")
    p.add_argument("--seeds", type=int, default=3, help="seeds of the final retrain (default 3)")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("train", help=cmd_train.__doc__, description=cmd_train.__doc__)
    p.add_argument("target", help="a study folder (retrains its best.json) or a config .json")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    p.add_argument("--point", action="append", default=[],
                   help="retrain this starting point of the study's space instead (repeatable)")
    p.add_argument("--data", help="dataset (default: the one the study searched)")
    p.add_argument("--fraction", type=float, help="train on a fixed-seed fraction")
    p.add_argument("--epochs", type=int, help="override the config's epochs")
    p.add_argument("--out", help="output folder (default: <study>/final)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("leaderboard", help=cmd_leaderboard.__doc__,
                       description=cmd_leaderboard.__doc__)
    p.add_argument("study", help="a study folder, results/<study>")
    p.add_argument("--top", type=int, help=f"rows to show (default {TOP}; --csv: all)")
    p.add_argument("--columns", help="these columns after the key ones, e.g. lr,optimizer,reason "
                   "(any column of leaderboard.csv); more tables if they do not fit")
    p.add_argument("--all", action="store_true",
                   help="every hyperparameter that varies, in as many tables as the width needs")
    p.add_argument("--csv", action="store_true",
                   help="print the rows as CSV, unformatted, for a pipe or a file")
    p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser("export", help=cmd_export.__doc__)
    p.add_argument("study", help="a study folder, results/<study>")
    p.add_argument("--rank", type=int, default=1, help="leaderboard rank (default 1, the best)")
    p.add_argument("-o", "--output", default="-", help="file to write (default: stdout)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help=cmd_report.__doc__)
    p.add_argument("study", help="a study folder, results/<study>")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("show", help=cmd_show.__doc__)
    p.add_argument("space", help="a space file")
    p.add_argument("--classes", type=int, default=10, help="classes, for parameter counts")
    p.set_defaults(func=cmd_show)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (SpaceError, FileNotFoundError, ValueError) as exc:
        return _fail(exc)
    except KeyboardInterrupt:
        print("hpo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
