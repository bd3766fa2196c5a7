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


def study_tuner(space, folder: Path, trainable, concurrency: int = 2):
    """One run of a study as hpo wires it (the Optuna record, its searcher, ASHA, the
    leaderboard callback) around a test's own trainable: (the Tune tuner, the leaderboard)."""
    import optuna

    from hpo.leaderboard import Leaderboard
    from hpo.tuning import SearchOptions
    from hpo.tuning.driver import new_tuner
    from hpo.tuning.observer import StudyCallback
    from hpo.tuning.scheduler import Rungs
    from hpo.tuning.searcher import Record, StudySearcher, open_study

    folder.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(f"sqlite:///{folder / 'study.db'}")
    record = open_study(space, folder.name, storage, seed=0)
    searcher = StudySearcher(space, record, storage, Record.read(record), space.trials)
    board = Leaderboard(folder / "leaderboard.csv", space.metric, space.mode)
    scheduler = Rungs(space.metric, space.mode, space.rungs(), space.reduction_factor)
    return new_tuner(space, SearchOptions(), folder, trainable, searcher,
                     StudyCallback(board, None, searcher), scheduler, concurrency,
                     space.trials), board


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


def write_study(folder: Path, space_file: Path, data: Path, config: dict,
                seeds: tuple[int, ...] = (0,)) -> Path:
    """A study folder as `hpo search` and then `hpo train --seeds N` leave it, for one config:
    trained by hpo.train.run_trial on the data the space decodes (as the study would split
    it) and recorded by hpo's Leaderboard (leaderboard.csv, configs.json, epochs.csv), its
    best epoch's weights as best.pt, best.json, space.py, study.json (data, options,
    fingerprint), and final/ written by hpo.final.retrain for `seeds`."""
    import shutil

    import torch
    from rich.console import Console

    from hpo.config import complete
    from hpo.data import load_dataset
    from hpo.files import write_json
    from hpo.final import retrain
    from hpo.leaderboard import Leaderboard
    from hpo.space import load_space
    from hpo.train import run_trial

    space = load_space(space_file)
    config = complete(config)
    dataset = load_dataset(data, val_fraction=space.val_fraction, seed=0, fraction=1.0,
                           image_size=space.image_size, channels=space.channels)
    folder.mkdir(parents=True)
    board = Leaderboard(folder / "leaderboard.csv", space.metric, space.mode)
    board.start("0", config)
    best: dict = {}

    def report(metrics, model=None, state=None):
        board.result("0", metrics)
        if model is not None and metrics["val_acc"] >= best.get("val_acc", -1.0):
            best.update(val_acc=metrics["val_acc"],
                        weights={k: v.clone() for k, v in model.state_dict().items()})

    assert run_trial(config, dataset, report)["status"] == "completed"
    board.finish("0")
    board.write()
    write_json(folder / "best.json", config)
    torch.save(best["weights"], folder / "best.pt")
    shutil.copy(space_file, folder / "space.py")
    write_json(folder / "study.json", {
        "identity": {"data": dataset.content, "fraction": 1.0, "split_seed": 0},
        "space": str(space_file), "data": str(data), "fingerprint": dataset.fingerprint,
        "options": {"data": str(data), "fraction": 1.0, "split_seed": 0}})
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
