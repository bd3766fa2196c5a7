"""`hpo`: thin commands over the package's functions. Each prints with rich and exits 2 with
one line on bad input.

Every option is checked by its argparse type, and every file by the command, before torch or
Ray is imported and before any file of a study is written: a mistake costs well under a
second and changes nothing. Heavy imports therefore live inside the commands.
"""

from __future__ import annotations

import argparse
import os
import sys
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


def _option(bound):
    """An argparse type checking a value against `bound` (hpo.tuning.options.Bound): the
    one line argparse prints names the allowed range, as hpo.search's error does."""
    def parse(text: str):
        try:
            return bound.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse


def cmd_search(args) -> int:
    """Search a space file; results go to results/<study>/."""
    from hpo.tuning import SearchOptions, run_study

    options = SearchOptions(
        data=args.data, trials=args.trials, max_epochs=args.max_epochs,
        grace_period=args.grace_period, name=args.name, fraction=args.fraction,
        split_seed=args.split_seed, seed=args.seed, storage=args.storage,
        gpus_per_trial=args.gpus_per_trial, cpus_per_trial=args.cpus_per_trial,
        trials_per_gpu=args.trials_per_gpu, address=args.address,
        storage_path=args.storage_path, fresh=args.fresh, num_cpus=args.num_cpus,
        concurrency=args.concurrency, checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints, epoch_budget=args.epoch_budget,
        time_budget=args.time_budget and args.time_budget * 60, results=Path(args.results),
        weights_dir=args.weights_dir, log=tuple(dict.fromkeys(args.log)),
        wandb_project=args.wandb_project, verbose=args.verbose)
    study = run_study(args.space, options)
    console = _console()
    if args.final and (study / "best.json").is_file():
        from hpo.api import Study

        Study(study).train(args.seeds, console=console)
    console.print(f"next: hpo leaderboard {study}   ·   hpo export {study} --rank 1 -o best.json")
    return 0


def cmd_train(args) -> int:
    """Retrain a config on train + validation for its full epochs, test once per seed."""
    from hpo.config import read_config
    from hpo.tuning.options import check_data_path

    target = Path(args.target)
    if target.is_dir():
        from hpo.api import Study

        Study(target).train(args.seeds, args.point, data=args.data, fraction=args.fraction,
                            epochs=args.epochs, out=args.out, weights_dir=args.weights_dir,
                            console=_console())
        return 0
    if target.suffix == ".json" or target.is_file():
        config = read_config(target)
        if not args.data:
            raise ValueError(f"{target}: pass --data for a config outside a study")
    else:
        raise ValueError(f"{target}: no such config file or study folder")
    check_data_path(args.data)
    from hpo.weights import check_weights

    check_weights([config], args.weights_dir)

    from hpo.data import load_dataset
    from hpo.final import retrain

    data = load_dataset(args.data, fraction=args.fraction or 1.0)
    if args.epochs:
        config = {**config, "epochs": args.epochs}
    retrain(config, data, range(args.seeds), Path(args.out or Path("results") /
                                                   f"final-{target.stem}"), "best", _console())
    return 0


def cmd_leaderboard(args) -> int:
    """Print a study's leaderboard to fit the terminal: the key columns, then the
    hyperparameters that vary, as many as fit (--all, --columns to choose); --csv for pipes."""
    from hpo.leaderboard import read_leaderboard

    board = read_leaderboard(args.study)  # first: a wrong path is told before the imports
    from hpo.table import print_leaderboard

    print_leaderboard(board, args.study, args.top, args.columns, args.all, args.csv,
                      _console())
    return 0


def cmd_report(args) -> int:
    """Write results/<study>/report.html: curves, importances, Pareto front, final results."""
    from hpo.study import check_study_folder

    check_study_folder(Path(args.study))
    from hpo.report import write_report

    _console().print(f"report → {write_report(args.study)}")
    return 0


def cmd_export(args) -> int:
    """Write the complete config of the trial at --rank, which `hpo train` and run_trial take;
    with --model, the best (or --final retrained) model with its preprocessing, runnable
    without hpo (.onnx for onnxruntime, .pt2 for torch.export)."""
    import json

    from hpo.files import write_json
    from hpo.leaderboard import config_at_rank

    if args.model and args.rank != 1:
        raise ValueError("--model: only the best trial's weights are kept (best.pt); drop --rank")
    if not args.model and (args.final or args.seed is not None or args.data or args.fraction):
        raise ValueError("--final, --seed, --data and --fraction go with --model")
    if args.model:
        from hpo.export import export_model

        out = export_model(args.study, args.model, final=args.final, seed=args.seed,
                           data=args.data, fraction=args.fraction)
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
    from hpo.model import Infeasible, build_model, count_parameters

    console = _console()
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


def _fail(exc: BaseException) -> int:
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    print(f"hpo: error: {lines[0]}", file=sys.stderr)
    return 2


def _weights_dir_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights-dir", help="folder of pretrained backbones' weights files, as "
                   "torchvision names them (default: torchvision's cache under $TORCH_HOME)")


def build_parser() -> argparse.ArgumentParser:
    from hpo.tuning.options import BOUNDS, CHECKPOINT_EVERY_S, TRACKERS, Bound

    def bounded(field: str):
        return _option(BOUNDS[field])

    POSITIVE, FRACTION = _option(Bound(1, whole=True)), bounded("fraction")

    parser = _Parser(prog="hpo", description="Hyperparameter search for image-classification "
                     "CNNs: Optuna TPE + ASHA on Ray Tune.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("search", help=cmd_search.__doc__, description=cmd_search.__doc__)
    p.add_argument("space", help="a space file, e.g. spaces/cifar10.py")
    p.add_argument("--data", help="dataset: a Parquet folder (Hugging Face layout), a torchvision "
                   "CIFAR-10 folder, torchvision:DIR to download, or a folder of class folders "
                   "(default: the space file's, or the study's on a resume)")
    p.add_argument("--trials", type=bounded("trials"),
                   help="trials to run (overrides the space file); "
                   "more than a finished study ran extends it")
    p.add_argument("--max-epochs", type=bounded("max_epochs"),
                   help="epochs of a full trial; ASHA's max_t")
    p.add_argument("--grace-period", type=bounded("grace_period"),
                   help="epochs before ASHA may stop a trial (1..max epochs)")
    p.add_argument("--name", help="study name (default: the space file's name); an existing "
                   "study of that name is resumed")
    p.add_argument("--fresh", action="store_true",
                   help="start over under a new name (<name>-2, ...) instead of resuming")
    p.add_argument("--fraction", type=FRACTION,
                   help="train on this fixed-seed fraction of the training set, in (0, 1], "
                        "for quick runs (default 1)")
    p.add_argument("--split-seed", type=bounded("split_seed"),
                   help="seed of the validation split and of --fraction (default 0)")
    p.add_argument("--seed", type=bounded("seed"), help="seed of the sampler (default 0)")
    p.add_argument("--storage", help="Optuna storage URL, e.g. postgresql://... for a cluster "
                   "(default: results/<study>/study.db)")
    p.add_argument("--gpus-per-trial", type=bounded("gpus_per_trial"),
                   help="GPU fraction per trial (default: from each trial's predicted memory, "
                        "calibrated on the GPU)")
    p.add_argument("--trials-per-gpu", type=bounded("trials_per_gpu"), default=4,
                   help="at most this many trials share a GPU when hpo picks (default 4)")
    p.add_argument("--cpus-per-trial", type=bounded("cpus_per_trial"), default=1.0,
                   help="CPUs per trial (default 1)")
    p.add_argument("--address", help="join a running Ray cluster (e.g. auto); default: local Ray")
    p.add_argument("--storage-path", help="where trials write results and checkpoints: a "
                   "path every node shares, or s3://... / gs://... (default: the study folder)")
    p.add_argument("--num-cpus", type=bounded("num_cpus"),
                   help="CPUs the local Ray may use (default: all)")
    p.add_argument("--concurrency", type=bounded("concurrency"),
                   help="trials at once (default: as resources allow)")
    p.add_argument("--checkpoint-every", type=bounded("checkpoint_every"),
                   default=CHECKPOINT_EVERY_S, metavar="SECONDS",
                   help="seconds of training between a trial's checkpoints (default "
                        f"{CHECKPOINT_EVERY_S:g}); it also checkpoints at each ASHA rung and at "
                        "its end")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep every trial's last checkpoint after it ends (default: only the "
                        "best trial's weights, as best.pt)")
    p.add_argument("--epoch-budget", type=bounded("epoch_budget"), metavar="EPOCHS",
                   help="stop this run once its trials have trained this many epochs in all "
                        "(the same command continues the study)")
    p.add_argument("--time-budget", type=bounded("time_budget"), metavar="MINUTES",
                   help="stop this run after this many minutes (the same command continues)")
    p.add_argument("--results", default="results", help="folder of study folders")
    p.add_argument("--log", action="append", default=[], choices=list(TRACKERS),
                   help="also log every trial's config and per-epoch metrics to this "
                        "experiment tracker (repeatable): mlflow (MLFLOW_TRACKING_URI, default "
                        "<results>/mlflow.db), wandb (--wandb-project or WANDB_PROJECT)")
    p.add_argument("--wandb-project", help="the W&B project of --log wandb (default: "
                   "WANDB_PROJECT)")
    p.add_argument("--verbose", action="store_true",
                   help="show Ray's output on the terminal too (it always goes to "
                        "results/<study>/ray.log)")
    p.add_argument("--final", action="store_true",
                   help="then retrain the best config on train + val and test it (hpo train)")
    p.add_argument("--seeds", type=POSITIVE, default=3,
                   help="seeds of the final retrain (default 3)")
    _weights_dir_argument(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("train", help=cmd_train.__doc__, description=cmd_train.__doc__)
    p.add_argument("target", help="a study folder (retrains its best.json) or a config .json")
    p.add_argument("--seeds", type=POSITIVE, default=3, help="seeds 0..N-1 (default 3)")
    p.add_argument("--point", action="append", default=[],
                   help="retrain this starting point of the study's space instead (repeatable)")
    p.add_argument("--data", help="dataset (default: the one the study searched)")
    p.add_argument("--fraction", type=FRACTION, help="train on a fixed-seed fraction")
    p.add_argument("--epochs", type=POSITIVE, help="override the config's epochs")
    p.add_argument("--out", help="output folder (default: <study>/final)")
    _weights_dir_argument(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("leaderboard", help=cmd_leaderboard.__doc__,
                       description=cmd_leaderboard.__doc__)
    p.add_argument("study", help="a study folder, results/<study>")
    p.add_argument("--top", type=POSITIVE, help="rows to show (default 10; --csv: all)")
    p.add_argument("--columns", help="these columns after the key ones, e.g. lr,optimizer,reason "
                   "(any column of leaderboard.csv); more tables if they do not fit")
    p.add_argument("--all", action="store_true",
                   help="every hyperparameter that varies, in as many tables as the width needs")
    p.add_argument("--csv", action="store_true",
                   help="print the rows as CSV, unformatted, for a pipe or a file")
    p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser("export", help=cmd_export.__doc__)
    p.add_argument("study", help="a study folder, results/<study>")
    p.add_argument("--rank", type=POSITIVE, default=1,
                   help="leaderboard rank (default 1, the best)")
    p.add_argument("-o", "--output", help="file to write the config to (default: stdout, "
                   "unless --model)")
    p.add_argument("--model", metavar="FILE", help="write the model here instead: FILE.onnx "
                   "(onnxruntime) or FILE.pt2 (torch.export), uint8 images in, probabilities out")
    p.add_argument("--final", action="store_true",
                   help="with --model: the retrained model of final/ (hpo train), not best.pt")
    p.add_argument("--seed", type=int, help="with --final: the retrain of this seed "
                   "(default: the first)")
    p.add_argument("--data", help="with --model: where the study's images are, when moved")
    p.add_argument("--fraction", type=FRACTION, help="with --final: the --fraction hpo train "
                   "had, when not the study's")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("predict", help=cmd_predict.__doc__, description=cmd_predict.__doc__)
    p.add_argument("model", help="a model hpo export --model wrote, FILE.onnx")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files and folders")
    p.add_argument("--top", type=POSITIVE, default=1, help="classes per image (default 1)")
    p.add_argument("--csv", action="store_true", help="CSV on stdout: file, class, "
                   "probability (then class_2, probability_2, ... with --top)")
    p.add_argument("--batch-size", type=POSITIVE, default=64,
                   help="images per onnxruntime run (default 64)")
    p.add_argument("--cpu", action="store_true",
                   help="run on the CPU even where onnxruntime has CUDA")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("report", help=cmd_report.__doc__)
    p.add_argument("study", help="a study folder, results/<study>")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("show", help=cmd_show.__doc__)
    p.add_argument("space", help="a space file")
    p.add_argument("--classes", type=POSITIVE, default=10, help="classes, for parameter counts")
    p.set_defaults(func=cmd_show)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:  # SpaceError, StudyError, DataError among them
        return _fail(exc)
    except KeyboardInterrupt:
        print("hpo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
