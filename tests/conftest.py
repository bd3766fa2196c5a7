"""Shared fixtures and writers of small, learnable synthetic datasets.

Tests import the writers directly: `from conftest import write_parquet_dataset`.
"""
from __future__ import annotations

import fcntl
import io
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

IMG_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def class_names(num_classes: int) -> list[str]:
    return [f"class{k}" for k in range(num_classes)]


def make_images(n: int, *, size: int | tuple[int, int] = 32, channels: int = 3,
                num_classes: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n learnable images, uint8 [n, H, W, C], and balanced int64 labels.

    Every class has its own mean colour (brightness when grayscale) and a stripe pattern of
    its own orientation and frequency; Gaussian noise on top keeps the task from being
    trivial. A small CNN gets well above chance within an epoch or two.
    `size` is an int (square) or (width, height).
    """
    w, h = (size, size) if isinstance(size, int) else size
    style = np.random.default_rng(1234)  # class styles do not depend on `seed`
    colours = style.uniform(50, 205, size=(num_classes, channels))
    angles = np.arange(num_classes) * np.pi / num_classes
    freqs = 2 * np.pi * style.uniform(2, 5, size=num_classes) / max(w, h)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % num_classes).astype(np.int64)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.empty((n, h, w, channels), np.uint8)
    for i, k in enumerate(labels):
        phase = rng.uniform(0, 2 * np.pi)
        stripes = 45 * np.sin(freqs[k] * (xx * np.cos(angles[k]) + yy * np.sin(angles[k]))
                              + phase)
        img = colours[k] + stripes[..., None] + rng.normal(0, 25, size=(h, w, channels))
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out, labels


def encode(img: np.ndarray, fmt: str = "PNG") -> bytes:
    """One HWC uint8 image as PNG/JPEG/... bytes (grayscale when C == 1)."""
    buf = io.BytesIO()
    Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, fmt)
    return buf.getvalue()


def write_parquet_split(file: Path, images: np.ndarray, labels: np.ndarray, *,
                        classes: list[str] | None, split: str = "train", fmt: str = "PNG",
                        metadata: dict[str, str] | None = None) -> Path:
    """One Parquet file in the Hugging Face layout: img struct<bytes, path>, label int64."""
    ext = fmt.lower()
    rows = [{"bytes": encode(im, fmt), "path": f"{split}/{y}/{i:05d}.{ext}"}
            for i, (im, y) in enumerate(zip(images, labels))]
    table = pa.table({"img": pa.array(rows, type=IMG_TYPE),
                      "label": pa.array(labels, type=pa.int64())})
    meta = dict(metadata or {})
    if classes is not None:
        meta["classes"] = ",".join(classes)
    table = table.replace_schema_metadata(meta or None)
    file.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, file)
    return file


def write_parquet_dataset(root: Path, *, n_train: int = 600, n_test: int = 200, size: int = 32,
                          channels: int = 3, num_classes: int = 10, seed: int = 0,
                          fmt: str = "PNG") -> Path:
    """Write root/train.parquet and root/test.parquet (HF layout, `classes` metadata)."""
    root = Path(root)
    names = class_names(num_classes)
    x, y = make_images(n_train + n_test, size=size, channels=channels,
                       num_classes=num_classes, seed=seed)
    write_parquet_split(root / "train.parquet", x[:n_train], y[:n_train], classes=names,
                        fmt=fmt)
    if n_test:
        write_parquet_split(root / "test.parquet", x[n_train:], y[n_train:], classes=names,
                            split="test", fmt=fmt)
    return root


def write_image_folder(root: Path, *, n_per_class: int, size: int | tuple[int, int] = 32,
                       channels: int = 3, num_classes: int = 3, with_test: bool = True,
                       seed: int = 0) -> Path:
    """Write root/train/<class>/*.png (and root/test/<class>/*.png when with_test)."""
    root = Path(root)
    names = class_names(num_classes)
    for s, split in enumerate(["train", "test"] if with_test else ["train"]):
        x, y = make_images(n_per_class * num_classes, size=size, channels=channels,
                           num_classes=num_classes, seed=seed + s)
        for i, (im, k) in enumerate(zip(x, y)):
            d = root / split / names[k]
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{i:05d}.png").write_bytes(encode(im))
    return root


@pytest.fixture(scope="session", autouse=True)
def _hpo_cache_env(tmp_path_factory):
    """Point HPO_CACHE at a temporary folder so no test writes into the user's home."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HPO_CACHE", str(tmp_path_factory.mktemp("hpo_cache")))
        yield


@pytest.fixture(scope="session")
def tiny_parquet(tmp_path_factory) -> Path:
    """A 10-class, 32x32 RGB Parquet dataset: 600 train and 200 test images (read-only)."""
    return write_parquet_dataset(tmp_path_factory.mktemp("tiny_parquet"))


def stored_study(folder: Path):
    """The Optuna study hpo keeps in a study folder (SQLite, named after the folder)."""
    import optuna

    return optuna.load_study(study_name=folder.name, storage=f"sqlite:///{folder / 'study.db'}")


ROOT = Path(__file__).parents[1]
TINY = ROOT / "tests/spaces/tiny.py"


def begun(results: Path, data: Path, space: Path = TINY, content: str = "c0ffee", **options):
    """A study of `space` born in `results` as `hpo search` begins one (planned, its record
    made and its views written; its images' hash `content`), with no trial run: (the Plan,
    its Record)."""
    from hpo.lock import StudyLock
    from hpo.options import SearchOptions
    from hpo.plan import plan_search
    from hpo.study import begin

    plan = plan_search(space, SearchOptions(data=str(data), results=str(results), **options))
    with StudyLock(plan.folder.path):
        return plan, begin(plan, content=content)


def write_trial(record, config: dict, reports: list[dict], *, status: str | None = None,
                reason: str = "", metric: str = "val_acc") -> int:
    """A trial written into `record` as the searcher writes one: asked, started, each report
    (a dict with "epoch" and what a trial reports) told, ended as the last report decides or
    as `status` ("running": left unfinished). Its number."""
    from hpo.registry import METRICS
    from hpo.status import Status, decide

    trial = record.ask()
    record.start(trial.number, config)
    last = {"epoch": 0, "epochs": config.get("epochs", 1)}
    for report in reports:
        last = {"epochs": config.get("epochs", 1), **report}
        record.epoch(trial.number, last, metric)
    if status != "running":
        final = Status(status) if status else decide(last)
        record.end(trial.number, final, reason, metric, METRICS[metric].mode)
    return trial.number


def add_trial(record, config: dict, values: list[float], *, epochs: int | None = None,
              status: str | None = None, reason: str = "", params: int = 100,
              metric: str = "val_acc") -> int:
    """`write_trial` with one report per value in `values` (the metric's), epochs 1, 2, ..."""
    epochs = epochs or len(values)
    reports = [{"epoch": e, metric: v, "params": params, "img_per_s": 10.0, "t_start": e,
                "t_end": e + 0.5} for e, v in enumerate(values, 1)]
    return write_trial(record, {"epochs": epochs, **config}, reports, status=status,
                       reason=reason, metric=metric)


def fast_trial(config, data=None, metric="val_acc", mode="max", rungs=(), checkpoint_every=0,
               resume=None):
    """A trainable for the search driver that builds no network: each epoch takes 20 ms and
    reports a value that grows with the epoch and is best near lr 0.01, so ASHA and TPE have
    something to tell apart."""
    import math
    import time

    from ray import tune

    epochs = config["epochs"]
    quality = max(0.05, 1 - abs(math.log10(config.get("lr", 0.01)) + 2) / 4)
    for epoch in range(1, epochs + 1):
        t0 = time.time()
        time.sleep(0.02)
        value = quality * epoch / epochs
        tune.report({"epoch": epoch, "epochs": epochs, "val_acc": value, "val_loss": 1 - value,
                     "train_loss": 1 - value, "params": 1000, "img_per_s": 100.0,
                     "train_seconds": 0.02, "t_start": t0, "t_end": time.time(),
                     "status": "completed" if epoch == epochs else "running"})


def search(space: Path, results: Path, data: Path, trainable=fast_trial, **options) -> Path:
    """One run of `hpo search` in this process, with `trainable` for its trials and its live
    view discarded: the study folder."""
    from ray import cloudpickle
    from rich.console import Console

    from hpo.options import SearchOptions
    from hpo.study import run_study

    if not trainable.__module__.startswith("hpo."):
        # Ray's workers cannot import a test module: the trainable travels by value
        cloudpickle.register_pickle_by_value(sys.modules[trainable.__module__])
    options.setdefault("num_cpus", 2)
    options.setdefault("select", 0)  # the selection's reruns: tests/test_selection.py
    return run_study(space, SearchOptions(data=str(data), results=str(results), **options),
                     console=Console(file=io.StringIO(), width=120), trainable=trainable)


def hpo_command(*args, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """`hpo ARGS` run as a user runs it, in `cwd`."""
    return subprocess.run([sys.executable, "-m", "hpo.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


@dataclass
class Finished:
    """A study `hpo search` ran to its end: its folder, where it ran, what it printed, and the
    row counts a reader polling leaderboard.csv meanwhile read."""

    folder: Path
    cwd: Path
    run: subprocess.CompletedProcess
    reads: list[int]


@pytest.fixture(scope="session")
def finished_study(tmp_path_factory, tiny_parquet) -> Finished:
    """One real `hpo search` of tests/spaces/tiny.py (6 trials, ASHA, the starting point, real
    training; then its top 2 configs once more each, with seed 1), run to its end once per
    session with a reader polling its leaderboard, for the tests that only read a finished
    study. They must not change it."""
    import threading

    import pandas as pd

    cwd = tmp_path_factory.mktemp("finished")
    board = cwd / "results/tiny/leaderboard.csv"
    reads, done = [], threading.Event()

    def read_while_running():
        while not done.is_set():
            if board.exists():
                reads.append(len(pd.read_csv(board)))  # must never see half a file
            time.sleep(0.05)

    reader = threading.Thread(target=read_while_running)
    reader.start()
    try:
        run = hpo_command("search", TINY, "--data", tiny_parquet, "--num-cpus", 2,
                          "--select", 2, "--select-seeds", 1, cwd=cwd)
    finally:
        done.set()
        reader.join()
    assert run.returncode == 0, run.stderr[-3000:]
    return Finished(cwd / "results/tiny", cwd, run, reads)


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    """An empty dataset cache folder for one test."""
    return tmp_path / "cache"


def run_in_terminal(args: list[str], cwd: Path, columns: int = 100, rows: int = 30,
                    timeout: float = 600) -> str:
    """Run `args` under a pseudo-terminal of the given size; return all it wrote."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen([str(a) for a in args], cwd=cwd, stdin=slave, stdout=slave,
                            stderr=slave, env={**env, "TERM": "xterm-256color"})
    os.close(slave)
    out, deadline = bytearray(), time.time() + timeout
    try:
        while time.time() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    assert proc.wait() == 0, out.decode(errors="replace")[-3000:]
    return out.decode(errors="replace")


NOISY_SPACE = '''"""3 trials: one diverges (the starting point), one crashes, one trains."""
from hpo.space import loguniform

metric, mode = "val_acc", "max"
trials = 3
max_epochs = 2
grace_period = 2
dimensions = {"stages": 1, "convs_1": 1, "width": 8, "optimizer": "sgd", "momentum": 0.0,
              "lr": loguniform(1e-3, 0.1), "batch_size": 64, "epochs": max_epochs}
# no batch norm, a dense layer, heavy momentum and lr 10: the loss is NaN in epoch 2
starting_points = {"diverges": dict(lr=10.0, momentum=0.99, bn="none", dense_layers=1)}
'''

# `hpo` whose trial 1 crashes in every attempt: Tune's error, traceback and retries for real
NOISY_DRIVER = '''import sys

import hpo.tuning.driver
from hpo.cli import main
from hpo.tuning.trainable import train_trial


def crashes_in_trial_1(config, **kwargs):
    if config["trial"] == 1:
        raise RuntimeError("simulated crash in the trial process")
    return train_trial(config, **kwargs)


hpo.tuning.driver.train_trial = crashes_in_trial_1
sys.exit(main())
'''


@pytest.fixture(scope="session")
def noisy_study(tmp_path_factory, tiny_parquet):
    """A real `hpo search` under a pseudo-terminal that everything tries to make noisy: a
    trial that diverges (NaN: tensorboardX's warning), one that crashes (Tune's tracebacks,
    retries), and both trackers (`--log mlflow --log wandb`, W&B offline, MLflow's default
    store). (the folder it ran in, the study folder, all the terminal showed)."""
    cwd = tmp_path_factory.mktemp("noisy")
    (cwd / "noisy.py").write_text(NOISY_SPACE)
    (cwd / "driver.py").write_text(NOISY_DRIVER)
    env = {"WANDB_MODE": "offline", "WANDB_PROJECT": "hpo-test", "MLFLOW_TRACKING_URI": None,
           "WANDB_DIR": None}
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            if value is None:
                mp.delenv(name, raising=False)
            else:
                mp.setenv(name, value)
        screen = run_in_terminal([sys.executable, "driver.py", "search", "noisy.py", "--data",
                                  tiny_parquet, "--num-cpus", 2, "--log", "mlflow", "--log",
                                  "wandb"], cwd=cwd)
    return cwd, cwd / "results/noisy", screen


def modules_loaded(statement: str) -> set[str]:
    """The top-level packages a fresh Python has imported after running `statement`."""
    code = f"import sys; {statement}; print(' '.join({{m.split('.')[0] for m in sys.modules}}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    return set(out.stdout.split())


GRAY_SPACE = '''"""Grayscale images decoded at 32 px, for a pretrained backbone (export tests)."""
metric, mode = "val_acc", "max"
trials, max_epochs = 1, 1
image_size, channels = 32, 1
dimensions = {"backbone": "resnet18"}
'''


def born(folder: Path, space_file: Path, data: Path):
    """A study folder born as hpo begins a study of `space_file` on `data`, no trial run yet:
    (its Space, the Dataset it decodes and splits as the study would, its Plan, its Record)."""
    from hpo.data import load_dataset
    from hpo.space import load_space

    space = load_space(space_file)
    dataset = load_dataset(data, val_fraction=space.val_fraction, seed=0, fraction=1.0,
                           image_size=space.image_size, channels=space.channels)
    plan, record = begun(folder.parent, data, space=space_file, content=dataset.content,
                         name=folder.name)
    return space, dataset, plan, record


def write_board(folder: Path, space_file: Path, data: Path,
                trials: list[tuple[dict, list[float]]]) -> Path:
    """A study folder whose record holds `trials`, each (a complete config, its metric per
    epoch), as the searcher writes them, none trained: leaderboard.csv, configs.json,
    best.json and study.json, no weights."""
    from hpo import views

    _, _, plan, record = born(folder, space_file, data)
    for config, values in trials:
        add_trial(record, config, values)
    views.rebuild(plan.folder, record)
    return folder


def write_study(folder: Path, space_file: Path, data: Path, config: dict,
                seeds: tuple[int, ...] = (0,)) -> Path:
    """A study folder as `hpo search` and then `hpo train --seeds N` leave it, for one config:
    born as hpo begins a study, the config trained by hpo.train.run_trial on the data the space
    decodes (as the study would split it) and written into the record as the searcher writes
    a trial, the views rebuilt, its best epoch's weights as best.pt, and final/ written by
    hpo.final.retrain for `seeds`."""
    import torch
    from rich.console import Console

    from hpo import views
    from hpo.config import complete
    from hpo.final import retrain
    from hpo.record import RUNS
    from hpo.status import decide
    from hpo.train import run_trial

    config = complete(config)
    space, dataset, plan, record = born(folder, space_file, data)
    trial = record.ask()
    record.start(trial.number, config)
    best: dict = {}

    def report(metrics, model=None, state=None):
        record.epoch(trial.number, metrics, space.metric)
        if model is not None and metrics["val_acc"] >= best.get("val_acc", -1.0):
            best.update(val_acc=metrics["val_acc"],
                        weights={k: v.clone() for k, v in model.state_dict().items()})

    last = run_trial(config, dataset, report)
    assert last["status"] == "completed"
    record.end(trial.number, decide(last), "", space.metric, space.mode)
    record.set_meta(RUNS, [{"fingerprint": dataset.fingerprint}])
    views.rebuild(plan.folder, record)
    torch.save(best["weights"], plan.folder.best_weights)
    if seeds:
        retrain(config, dataset, seeds, folder / "final", "best",
                Console(file=io.StringIO()))
    return folder


# a small CNN that learns the generated images well within 3 epochs
CNN = dict(stages=2, convs_1=1, convs_2=1, width=16, bn="before", head="gap", epochs=3,
           optimizer="adam", lr=0.01, batch_size=64)


@pytest.fixture(scope="session")
def cnn_study(tmp_path_factory, tiny_parquet) -> Path:
    """results/cnn: hpo's own CNN on the 10-class RGB data, with a retrain of seed 0."""
    root = tmp_path_factory.mktemp("studies")
    return write_study(root / "cnn", Path(__file__).parent / "spaces/tiny.py", tiny_parquet,
                       CNN)


@pytest.fixture(scope="session")
def backbone_study(tmp_path_factory) -> Path:
    """results/gray: a pretrained resnet18 (weights: a random start saved under
    torchvision's file name) cut after stage 2 under a GAP head, on grayscale 40x36 images
    the space decodes at 32x32, resized to 48 px for the backbone; no retrain."""
    import torch
    from torchvision.models import get_model

    from hpo.weights import WEIGHTS_ENV, weights_filename

    root = tmp_path_factory.mktemp("gray")
    data = write_parquet_dataset(root / "data", n_train=160, n_test=100, size=(40, 36),
                                 channels=1, num_classes=4)
    (root / "gray.py").write_text(GRAY_SPACE)
    weights = root / "weights"
    weights.mkdir()
    torch.manual_seed(1)
    torch.save(get_model("resnet18").state_dict(), weights / weights_filename("resnet18"))
    config = dict(backbone="resnet18", pretrained=True, cut=2, frozen=1, input_size=48,
                  head="gap", epochs=2, optimizer="adam", lr=0.003, batch_size=32)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(WEIGHTS_ENV, str(weights))
        return write_study(root / "results/gray", root / "gray.py", data, config, seeds=())
