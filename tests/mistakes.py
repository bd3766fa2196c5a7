"""Every bad invocation hpo must answer in one line, with what the line says: one table, which
tests/test_cli.py runs against a finished study (exit status 2, one line, no file changed),
bench/errors.py times, and the docs' troubleshooting page prints (docs/hooks.py).

Each row: what a user typed, as the docs show it (`s.py` is the study's space file,
`results/tiny` the finished study, 4 epochs of 6 trials), the arguments a test passes (a
function of the `Made` files), what the one line must contain, and modules to hide (an extra
not installed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from conftest import TINY, write_image_folder, write_parquet_dataset

ROOT = Path(__file__).parents[1]


@dataclass
class Made:
    """Broken spaces, configs and datasets, each named for what is wrong with it, in `tmp`,
    and the good dataset `data` the finished study searched."""

    tmp: Path
    data: Path
    f: dict[str, Path] = field(default_factory=dict)

    def __post_init__(self):
        good = TINY.read_text()
        texts = {
            "empty.py": "", "syntax.py": "metric = 'val_acc'\ndimensions = {\n",
            "broken.py": "import nonexistent_module\n", "partial.py": "metric = 'val_acc'\n",
            "dropout.py": good + "dimensions['dropout_1'] = 1.5\n",
            "opt.py": good + "dimensions['optimizer'] = 'adamz'\n",
            "mode.py": good + "mode = 'min'\n",
            "other.py": good + "dimensions['width'] = 32\nname = 'tiny'\n",
            "empty.json": "", "notjson.json": "{'lr': 0.1}", "list.json": "[1, 2]",
            "unknown.json": json.dumps({"lr": 0.1, "dropuot_1": 0.2}),
            "range.json": json.dumps({"lr": 0.1, "dropout_1": 2.0}), "afile": "not a folder",
            "good.json": json.dumps({"lr": 0.1})}
        for name, text in texts.items():
            self.f[name] = self.tmp / name
            self.f[name].write_text(text)
        self.f["nodata"] = self.tmp / "nodata"
        self.f["nodata"].mkdir()
        cut = write_parquet_dataset(self.tmp / "cut", n_train=50, n_test=10)
        data = (cut / "train.parquet").read_bytes()
        (cut / "train.parquet").write_bytes(data[: len(data) // 2])
        self.f["cut"] = cut
        nolabel = write_parquet_dataset(self.tmp / "nolabel", n_train=30, n_test=0)
        table = pq.read_table(nolabel / "train.parquet")
        pq.write_table(table.drop(["label"]).append_column("kind", pa.array(["x"] * len(table))),
                       nolabel / "train.parquet")
        self.f["nolabel"] = nolabel
        self.f["oneclass"] = write_image_folder(self.tmp / "oneclass", n_per_class=10,
                                                num_classes=1, with_test=False)
        badimage = write_image_folder(self.tmp / "badimage", n_per_class=5, num_classes=2)
        (badimage / "train/class0/00000.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
        self.f["badimage"] = badimage
        self.f["other"] = write_parquet_dataset(self.tmp / "other", n_train=100, n_test=10,
                                                seed=5)

    def search(self, *more) -> list:
        return ["search", TINY, "--data", self.data, "--num-cpus", 2, *more]


@dataclass(frozen=True)
class Mistake:
    typed: str
    args: Callable[[Made], list]
    says: str
    hidden: tuple[str, ...] = ()


def _search(*more):
    return lambda m: m.search(*more)


def _space(name):
    return lambda m: ["search", m.f[name], "--data", m.data]


def _data(name, **kw):
    return lambda m: ["search", TINY, "--data", m.f[name], "--name", "x"]


def _train(name):
    return lambda m: ["train", m.f[name], "--data", m.data]


STUDY = "results/tiny"
MISTAKES = [
    # options out of range: argparse's own line, naming what the option takes
    Mistake("hpo search s.py --trials 0", _search("--trials", 0),
            "argument --trials: must be 1 or more, got 0"),
    Mistake("hpo search s.py --trials many", _search("--trials", "many"),
            "argument --trials: must be a whole number, got 'many'"),
    Mistake("hpo search s.py --max-epochs -1", _search("--max-epochs", -1),
            "argument --max-epochs: must be 1 or more, got -1"),
    Mistake("hpo search s.py --grace-period 9", _search("--grace-period", 9),
            "--grace-period must be in 1..4 (the max epochs of a trial), got 9"),
    Mistake("hpo search s.py --fraction 1.5", _search("--fraction", 1.5),
            "argument --fraction: must be in (0, 1], got 1.5"),
    Mistake("hpo search s.py --gpus-per-trial 0", _search("--gpus-per-trial", 0),
            "argument --gpus-per-trial: must be in (0, 64], got 0"),
    Mistake("hpo search s.py --cpus-per-trial -1", _search("--cpus-per-trial", -1),
            "argument --cpus-per-trial: must be in (0, 1024], got -1"),
    Mistake("hpo search s.py --concurrency 0", _search("--concurrency", 0),
            "argument --concurrency: must be 1 or more, got 0"),
    Mistake("hpo search s.py --checkpoint-every -5", _search("--checkpoint-every", -5),
            "argument --checkpoint-every: must be 0 or more, got -5"),
    Mistake("hpo search s.py --name ''", _search("--name", ""),
            "argument --name: must be a folder's name (not empty, no / or \\, not . or ..)"),
    Mistake("hpo search s.py --name a/b", _search("--name", "a/b"),
            "argument --name: must be a folder's name"),
    Mistake("hpo search s.py --bogus", _search("--bogus"), "unrecognized arguments: --bogus"),
    # what this machine cannot do, before Ray starts on it
    Mistake("hpo search s.py --gpus-per-trial 3 (no GPU here, no --address)",
            _search("--gpus-per-trial", 3, "--name", "x"),
            "--gpus-per-trial 3: this machine has no GPU"),
    Mistake("hpo search s.py --cpus-per-trial 64 (fewer CPUs here, no --address)",
            _search("--cpus-per-trial", 64, "--name", "x"),
            "--cpus-per-trial 64: a trial would need more CPUs than"),
    # the record's database and the cluster, checked before Ray starts
    Mistake("hpo search s.py --storage foo://x", _search("--storage", "foo://x", "--name", "x"),
            "--storage foo://x: SQLAlchemy knows no database kind 'foo'"),
    Mistake("hpo search s.py --storage 'postgresql+psycopg://u:pw@127.0.0.1:1/db' (no server)",
            _search("--storage", "postgresql+psycopg://u:pw@127.0.0.1:1/db", "--name", "x"),
            "--storage postgresql+psycopg://u:***@127.0.0.1:1/db: cannot reach the database "
            "server"),
    Mistake("hpo search s.py --address 127.0.0.1:1 (nothing there)",
            _search("--address", "127.0.0.1:1", "--name", "x"),
            "--address 127.0.0.1:1: no Ray cluster answers at 127.0.0.1:1"),
    # a tracker whose extra is not installed, or has nowhere to log
    Mistake("hpo search s.py --log mlflow (the extra not installed)", _search("--log", "mlflow"),
            "--log mlflow: mlflow is not installed; install hpo's extra: pip install -e "
            "'.[mlflow]'", ("mlflow",)),
    Mistake("hpo search s.py --log wandb (no project)", _search("--log", "wandb"),
            "--log wandb: no W&B project; pass --wandb-project or set WANDB_PROJECT"),
    # space files: missing, empty, corrupt, wrong values
    Mistake("hpo search missing.py", lambda m: ["search", m.tmp / "missing.py"],
            "missing.py: no such space file"),
    Mistake("hpo search empty.py (an empty file)", _space("empty.py"),
            "empty.py: missing required name(s): metric, trials, max_epochs, dimensions"),
    Mistake("hpo search syntax.py (a syntax error)", _space("syntax.py"),
            "syntax.py: could not import: SyntaxError"),
    Mistake("hpo search broken.py (imports what is not there)", _space("broken.py"),
            "broken.py: could not import: ModuleNotFoundError"),
    Mistake("hpo search s.py with dimensions['dropout_1'] = 1.5", _space("dropout.py"),
            "dropout.py: dropout_1 must be in [0, 0.6], got 1.5"),
    Mistake("hpo search s.py with dimensions['optimizer'] = 'adamz'", _space("opt.py"),
            "opt.py: optimizer must be one of sgd, adam, adamw, rmsprop, adagrad, adadelta, "
            "adamax, got 'adamz'"),
    Mistake("hpo search s.py with mode = 'min' for val_acc", _space("mode.py"),
            "mode.py: mode 'min' does not fit metric 'val_acc': val_acc is better higher"),
    # data: missing, not a dataset, damaged
    Mistake("hpo search s.py --data nowhere",
            lambda m: ["search", TINY, "--data", m.tmp / "nowhere", "--name", "x"],
            "nowhere: does not exist (--data)"),
    Mistake("hpo search s.py --data empty-folder", _data("nodata"),
            "nodata: no dataset hpo recognises here"),
    Mistake("hpo search s.py --data cut (a truncated Parquet file)", _data("cut"),
            "cut/train.parquet: not a readable Parquet file, truncated or corrupt"),
    Mistake("hpo search s.py --data nolabel (Parquet without labels)", _data("nolabel"),
            "nolabel/train.parquet: no label column"),
    Mistake("hpo search s.py --data oneclass (one class folder)", _data("oneclass"),
            "oneclass: only one class (class0): nothing to tell apart"),
    Mistake("hpo search s.py --data badimage (a file that is not an image)", _data("badimage"),
            "badimage/train/class0/00000.png: cannot read image"),
    # the finished study: another space, other settings
    Mistake("hpo search other.py (another space, the same study name)", _space("other.py"),
            f"{STUDY}: the space file differs from the one this study searched"),
    Mistake("hpo search s.py --fraction 0.5", _search("--fraction", 0.5),
            f"{STUDY}: --fraction differs from this study's: recorded 1.0, given 0.5; pass "
            "--fresh"),
    Mistake("hpo search s.py --seed 3", _search("--seed", 3),
            f"{STUDY}: --seed differs from this study's: recorded 0, given 3"),
    Mistake("hpo search s.py --split-seed 1", _search("--split-seed", 1),
            f"{STUDY}: --split-seed differs from this study's: recorded 0, given 1"),
    Mistake("hpo search s.py --max-epochs 2", _search("--max-epochs", 2),
            f"{STUDY}: --max-epochs differs from this study's: recorded 4, given 2"),
    Mistake("hpo search s.py --data other-images",
            lambda m: ["search", TINY, "--data", m.f["other"]],
            f"{STUDY}: --data (the images themselves) differ from the ones this study "
            "searched"),
    Mistake("hpo search s.py --results afile (a file)",
            lambda m: m.search("--results", m.f["afile"]), "afile: is a file, not a folder"),
    Mistake("hpo search s.py --warm-start empty-folder (no study there)",
            lambda m: m.search("--warm-start", m.f["nodata"], "--name", "x"),
            "nodata: no study record (study.db) there"),
    # pretrained weights that are not there
    Mistake("hpo search spaces/transfer.py --weights-dir w (a file missing)",
            lambda m: ["search", ROOT / "spaces/transfer.py", "--data", m.data,
                       "--weights-dir", m.f["nodata"]],
            "pretrained weights convnext_tiny-983f1562.pth are not in"),
    Mistake("hpo search spaces/transfer.py --weights-dir nowhere",
            lambda m: ["search", ROOT / "spaces/transfer.py", "--data", m.data,
                       "--weights-dir", m.tmp / "noweights"], "noweights: no such folder"),
    # configs and study folders given to the other commands
    Mistake("hpo train empty.json --data d", _train("empty.json"),
            "empty.json: the config file is empty"),
    Mistake("hpo train notjson.json --data d", _train("notjson.json"),
            "notjson.json: not valid JSON (line 1, column 2"),
    Mistake("hpo train list.json --data d", _train("list.json"),
            "list.json: the config file must hold a JSON object {...}, not a list"),
    Mistake("hpo train unknown.json --data d", _train("unknown.json"),
            "unknown.json: unknown config key 'dropuot_1'"),
    Mistake("hpo train range.json --data d", _train("range.json"),
            "range.json: dropout_1 must be in [0, 0.6], got 2"),
    Mistake("hpo train nope.json --data d",
            lambda m: ["train", m.tmp / "nope.json", "--data", m.data],
            "nope.json: no such config file or study folder"),
    Mistake("hpo train results/tiny --point nosuch",
            lambda m: ["train", STUDY, "--point", "nosuch"],
            f"{STUDY}: no starting point 'nosuch' in its space (it has: too-slow)"),
    Mistake("hpo train results/tiny --out afile (a file)",
            lambda m: ["train", STUDY, "--out", m.f["afile"]], "afile: is a file, not a folder"),
    Mistake("hpo train empty-folder", lambda m: ["train", m.f["nodata"]],
            "nodata: not a study folder"),
    # ensembles
    Mistake("hpo train results/tiny --ensemble 1", lambda m: ["train", STUDY, "--ensemble", 1],
            "argument --ensemble: must be 2 or more, got 1"),
    Mistake("hpo train results/tiny --ensemble-of trials",
            lambda m: ["train", STUDY, "--ensemble", 2, "--ensemble-of", "trials"],
            "argument --ensemble-of: must be one of configs, seeds, got 'trials'"),
    Mistake("hpo train results/tiny --ensemble 99", lambda m: ["train", STUDY, "--ensemble", 99],
            f"{STUDY}: --ensemble 99 needs 99 completed configs and the study has "),
    Mistake("hpo train c.json --data d --ensemble 3 (configs, of one config)",
            lambda m: [*_train("good.json")(m), "--ensemble", 3],
            "good.json: --ensemble-of configs takes a study's top configs, and a config file is "
            "one; pass --ensemble-of seeds"),
    Mistake("hpo train results/tiny --ensemble 3 --point too-slow",
            lambda m: ["train", STUDY, "--ensemble", 3, "--point", "too-slow"],
            "--ensemble and --point: an ensemble is of the study's best configs or the best "
            "one's seeds, not of starting points"),
    Mistake("hpo export results/tiny --ensemble (no --model)",
            lambda m: ["export", STUDY, "--ensemble"],
            "--final, --seed, --ensemble, --data and --fraction go with --model"),
    Mistake("hpo export results/tiny --ensemble --seed 1 --model m.onnx",
            lambda m: ["export", STUDY, "--ensemble", "--seed", 1, "--model", m.tmp / "m.onnx"],
            "--seed picks one retrain; --ensemble exports all its members"),
    Mistake("hpo export results/tiny --ensemble --model m.onnx (none retrained)",
            lambda m: ["export", STUDY, "--ensemble", "--model", m.tmp / "m.onnx"],
            f"{STUDY}: no retrained ensemble"),
    Mistake("hpo leaderboard nostudy", lambda m: ["leaderboard", m.tmp / "nostudy"],
            "nostudy: no such study folder"),
    Mistake("hpo export results/tiny --rank 99", lambda m: ["export", STUDY, "--rank", 99],
            f"{STUDY}: no trial at rank 99 (the study has 6)"),
    Mistake("hpo export results/tiny -o /nonexistent/dir/best.json",
            lambda m: ["export", STUDY, "-o", "/nonexistent/dir/best.json"],
            "/nonexistent/dir: no such folder (-o)"),
    Mistake("hpo report empty-folder", lambda m: ["report", m.f["nodata"]],
            "nodata: not a study folder"),
    Mistake("hpo show missing.py", lambda m: ["show", m.tmp / "missing.py"],
            "missing.py: no such space file"),
]
