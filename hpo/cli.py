"""`hpo`: thin commands over the package's functions. Each prints with rich and, on a mistake,
exits with one line.

The options of `hpo search` and `hpo train` come from their declarations (hpo.options), and
every value is checked as it is parsed, before torch or Ray is imported and before any file of
a study is written: a mistake costs well under a second and changes nothing. Heavy imports
therefore live inside the commands. Only hpo's own errors (hpo.errors) become one line;
anything else is a bug, shown with its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path


def _console():
    from rich.console import Console

    # the terminal's width (or COLUMNS); piped output is not cropped to 80 columns: the table
    # goes to a file or another program whole
    return Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 240)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # one line, not argparse's usage block: the user sees what is wrong at once
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def cmd_search(args) -> int:
    """Search a space file; results go to results/<study>/."""
    from hpo.options import SearchOptions, TrainOptions, from_arguments
    from hpo.study import run_study

    options = from_arguments(SearchOptions, args)
    study = run_study(args.space, options)
    console = _console()
    if options.final and (study / "best.json").is_file():
        from hpo.final import train

        train(TrainOptions(target=str(study), seeds=options.seeds,
                           weights_dir=options.weights_dir), console)
    console.print(f"next: hpo leaderboard {study}   ·   hpo report {study}   ·   "
                  f"hpo train {study}")
    return 0


def cmd_train(args) -> int:
    """Retrain a config on train + validation for its full epochs, test once per seed (or
    --ensemble K: K models, their averaged prediction tested once)."""
    from hpo.final import train
    from hpo.options import TrainOptions, from_arguments

    train(from_arguments(TrainOptions, args), _console())
    return 0


def cmd_leaderboard(args) -> int:
    """Print a study's leaderboard to fit the terminal: the key columns, then the
    hyperparameters that vary, as many as fit (--all, --columns to choose); --csv for pipes.
    A leaderboard that is missing or damaged is rebuilt from the study's record first."""
    from hpo.errors import StudyError
    from hpo.folder import StudyFolder
    from hpo.leaderboard import read_rows

    folder = StudyFolder(args.study)
    folder.check_exists()
    try:
        board = read_rows(folder.path)  # no pandas for a file as hpo wrote it
    except StudyError:
        if not folder.record.is_file():
            raise
        from hpo.views import repair

        repair(folder)
        print(f"{folder.leaderboard}: was missing or unreadable; rebuilt from the study's "
              "record", file=sys.stderr)
        board = read_rows(folder.path)
    from hpo.study import read_meta
    from hpo.table import print_leaderboard

    try:
        importances = read_meta(folder.path).get("importances")
    except StudyError:  # the order of the columns is all it gives; the table goes on
        importances = None
    print_leaderboard(board, args.study, args.top, args.columns, args.all, args.csv,
                      _console(), importances)
    return 0


def cmd_report(args) -> int:
    """Write results/<study>/report.html: curves, importances, Pareto front, final results."""
    from hpo.folder import StudyFolder

    StudyFolder(args.study).check()
    from hpo.report import write_report

    console = _console()
    console.print(f"report → {write_report(args.study, console)}")
    return 0


def cmd_export(args) -> int:
    """Write the complete config of the trial at --rank, which `hpo train` and run_trial take;
    with --model, the best (or --final retrained, or --ensemble) model with its preprocessing,
    runnable without hpo (.onnx for onnxruntime, .pt2 for torch.export)."""
    import json

    from hpo.errors import ConfigError
    from hpo.files import write_json
    from hpo.leaderboard import config_at_rank
    from hpo.preflight import check_output

    if args.model and args.rank != 1:
        raise ConfigError("--model: only the best trial's weights are kept (best.pt); drop "
                          "--rank")
    if not args.model and (args.final or args.seed is not None or args.ensemble or args.data
                           or args.fraction):
        raise ConfigError("--final, --seed, --ensemble, --data and --fraction go with --model")
    if args.output not in (None, "-"):
        check_output(args.output, "-o")
    if args.model:
        check_output(args.model, "--model")
        from hpo.export import export_model

        out = export_model(args.study, args.model, final=args.final, seed=args.seed,
                           ensemble=args.ensemble, data=args.data, fraction=args.fraction)
        _console().print(f"model → {out}")
    if args.model and args.output is None:
        return 0
    config = config_at_rank(args.study, args.rank)
    if args.output in (None, "-"):
        print(json.dumps(config, indent=2))
    else:
        write_json(Path(args.output), config)
        _console().print(f"rank {args.rank} config → {args.output}")
    return 0


def cmd_predict(args) -> int:
    """Classify image files and folders (recursively) with a model hpo export wrote (.onnx):
    a line per image on stdout, a summary on stderr."""
    from hpo.predict import print_predictions

    return print_predictions(args.model, args.paths, top=args.top, as_csv=args.csv,
                             batch=args.batch_size, cpu=args.cpu)


def cmd_show(args) -> int:
    """Print a space file's dimensions and its starting points with their sizes."""
    from hpo.space import load_space

    space = load_space(args.space)  # first: a wrong path is told before torch is imported
    import torch
    from rich.table import Table

    from hpo.config import complete
    from hpo.errors import Infeasible
    from hpo.model import build_model, count_parameters

    console = _console()
    table = Table(title=f"{space.path}: {space.trials} trials · {space.max_epochs} max epochs · "
                  f"ASHA grace {space.grace_period}, η {space.reduction_factor:g} · "
                  f"{space.mode} {space.metric}", header_style="bold")
    for c in ("dimension", "values", "conditional"):
        table.add_column(c)
    for name, dim in space.searched().items():
        table.add_row(name, dim.describe(), "yes" if dim.when else "")
    for name, value in space.constants().items():
        table.add_row(name, f"= {value!r}", "")
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


def build_parser() -> argparse.ArgumentParser:
    from hpo.options import SearchOptions, TrainOptions, add_arguments
    from hpo.values import COUNT, FRACTION, WHOLE

    def checked(allowed):
        def parse(text: str):
            try:
                return allowed.parse(text)
            except ValueError as exc:
                raise argparse.ArgumentTypeError(str(exc)) from None
        return parse

    whole, count, fraction = checked(WHOLE), checked(COUNT), checked(FRACTION)

    parser = _Parser(prog="hpo", description="Hyperparameter search for image-classification "
                     "CNNs: Optuna TPE + ASHA on Ray Tune.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("search", help=cmd_search.__doc__, description=cmd_search.__doc__)
    p.add_argument("space", help="a space file, e.g. spaces/cifar10.py")
    add_arguments(p, SearchOptions)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("train", help=cmd_train.__doc__, description=cmd_train.__doc__)
    add_arguments(p, TrainOptions)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("leaderboard", help=cmd_leaderboard.__doc__,
                       description=cmd_leaderboard.__doc__)
    p.add_argument("study", help="a study folder, results/<study>")
    p.add_argument("--top", type=whole, help="rows to show (default 10; --csv: all)")
    p.add_argument("--columns", help="these columns after the key ones, e.g. lr,optimizer,reason "
                   "(any column of leaderboard.csv); more tables if they do not fit")
    p.add_argument("--all", action="store_true",
                   help="every hyperparameter that varies, in as many tables as the width needs")
    p.add_argument("--csv", action="store_true",
                   help="print the rows as CSV, unformatted, for a pipe or a file")
    p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser("export", help=cmd_export.__doc__, description=cmd_export.__doc__)
    p.add_argument("study", help="a study folder, results/<study>")
    p.add_argument("--rank", type=whole, default=1, help="leaderboard rank (default 1, the best)")
    p.add_argument("-o", "--output", help="file to write the config to (default: stdout, "
                   "unless --model)")
    p.add_argument("--model", metavar="FILE", help="write the model here instead: FILE.onnx "
                   "(onnxruntime) or FILE.pt2 (torch.export), uint8 images in, probabilities out")
    p.add_argument("--final", action="store_true",
                   help="with --model: the retrained model of final/ (hpo train), not best.pt")
    p.add_argument("--seed", type=count, help="with --final: the retrain of this seed "
                   "(default: the first)")
    p.add_argument("--ensemble", action="store_true", help="with --model: the ensemble hpo "
                   "train --ensemble retrained in final/, all its members in the one file, "
                   "averaging their probabilities")
    p.add_argument("--data", help="with --model: where the study's images are, when moved")
    p.add_argument("--fraction", type=fraction, help="with --final: the --fraction hpo train "
                   "had, when not the study's")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("predict", help=cmd_predict.__doc__, description=cmd_predict.__doc__)
    p.add_argument("model", help="a model hpo export --model wrote, FILE.onnx")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files and folders")
    p.add_argument("--top", type=whole, default=1, help="classes per image (default 1)")
    p.add_argument("--csv", action="store_true", help="CSV on stdout: file, class, "
                   "probability (then class_2, probability_2, ... with --top)")
    p.add_argument("--batch-size", type=whole, default=64,
                   help="images per onnxruntime run (default 64)")
    p.add_argument("--cpu", action="store_true",
                   help="run on the CPU even where onnxruntime has CUDA")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("report", help=cmd_report.__doc__, description=cmd_report.__doc__)
    p.add_argument("study", help="a study folder, results/<study>")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("show", help=cmd_show.__doc__, description=cmd_show.__doc__)
    p.add_argument("space", help="a space file")
    p.add_argument("--classes", type=whole, default=10, help="classes, for parameter counts")
    p.set_defaults(func=cmd_show)
    return parser


def main(argv: list[str] | None = None) -> int:
    from hpo.errors import HpoError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except HpoError as exc:
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        print(f"hpo: error: {lines[0]}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("hpo: interrupted", file=sys.stderr)
        return 130
    except Exception:  # not a mistake hpo knows: a bug, with what is needed to fix it
        traceback.print_exc()
        print("hpo: this is a bug in hpo, not a mistake of yours; please report it with the "
              "traceback above", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
