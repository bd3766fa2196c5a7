"""`hpo`: thin commands over the package's functions. Each prints with rich and exits 2 with
one line on bad input."""

from __future__ import annotations

import argparse
import json
import numbers
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from hpo.space import SpaceError, load_space

# piped output is not cropped to 80 columns: the table goes to a file or another program whole
console = Console(width=None if sys.stdout.isatty() else 240)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # one line, not argparse's usage block: the user sees what is wrong at once
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def cmd_search(args) -> int:
    """Search a space file; results go to results/<study>/."""
    from hpo.backbone import check_weights
    from hpo.search import SearchOptions, StudyError, run_search

    options = SearchOptions(
        data=args.data, trials=args.trials, max_epochs=args.max_epochs,
        grace_period=args.grace_period, name=args.name,
        gpus_per_trial=args.gpus_per_trial, cpus_per_trial=args.cpus_per_trial,
        trials_per_gpu=args.trials_per_gpu,
        fraction=args.fraction, address=args.address, storage_path=args.storage_path,
        fresh=args.fresh, storage=args.storage,
        num_cpus=args.num_cpus,
        concurrency=args.concurrency, seed=args.seed, results=Path(args.results),
        weights_dir=args.weights_dir)
    try:
        space = load_space(args.space)
        check_weights(space=space, weights_dir=args.weights_dir)  # before Ray starts
        study = run_search(space, options)
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
    from hpo.backbone import check_weights
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
    check_weights([config for _, config in jobs], args.weights_dir)
    for name, config in jobs:
        if args.epochs:
            config = {**config, "epochs": args.epochs}
        retrain(config, data, range(args.seeds), Path(args.out or out), name, console)
    return 0


def cmd_leaderboard(args) -> int:
    """Print the top rows of a study's leaderboard."""
    from hpo.leaderboard import read_leaderboard

    # nullable integers, so an epoch shows as 4, not 4.0, beside trials that have none
    board = read_leaderboard(args.study).head(args.top).convert_dtypes()
    fixed = ["rank", "trial_id", "point", "status", board.columns[4], "best_epoch",
             "epochs_trained", "params", "wall_s"]
    first_hp = list(board.columns).index("node") + 1
    # show the hyperparameters that differ between the rows shown, not the 50 constant ones
    varying = [c for c in board.columns[first_hp:] if board[c].nunique(dropna=False) > 1]
    columns = fixed + (varying if args.all else varying[: args.columns])
    table = Table(title=str(args.study), header_style="bold")
    for c in columns:
        numeric = pd.api.types.is_numeric_dtype(board[c]) and not pd.api.types.is_bool_dtype(
            board[c])
        table.add_column(c, justify="right" if numeric else "left",
                         min_width=min(len(c), 10))
    for _, row in board[columns].iterrows():
        table.add_row(*("" if pd.isna(v) else _fmt(v) for v in row))
    console.print(table)
    return 0


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
    import torch

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
    points.add_column("total parameters", justify="right")
    for name in space.starting_points:
        try:
            with torch.device("meta"):  # sizes only: no memory, no pretrained weights read
                model = build_model(complete(space.point(name)), shape, args.classes)
            sizes = (count_parameters(model), sum(p.numel() for p in model.parameters()))
            points.add_row(name, *(f"{n:,}" for n in sizes))
        except Infeasible as exc:
            points.add_row(name, f"infeasible: {exc}", "")
    console.print(points)
    return 0


def _fmt(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, numbers.Integral):
        return f"{v:,}"
    if isinstance(v, numbers.Real):
        return f"{v:.4f}" if abs(v) < 1 else f"{v:,.1f}"
    return str(v)


def _fail(exc: Exception) -> int:
    print(f"hpo: error: {exc}", file=sys.stderr)
    return 2


def _weights_dir_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights-dir", help="folder of pretrained backbones' weights files, as "
                   "torchvision names them (default: torchvision's cache under $TORCH_HOME)")


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
    _weights_dir_argument(p)
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
    _weights_dir_argument(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("leaderboard", help=cmd_leaderboard.__doc__)
    p.add_argument("study", help="a study folder, results/<study>")
    p.add_argument("--top", type=int, default=10, help="rows to show (default 10)")
    p.add_argument("--columns", type=int, default=4, help="hyperparameter columns to show")
    p.add_argument("--all", action="store_true", help="show every varying hyperparameter")
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
