"""Bad input: one line naming the option, file or setting, exit status 2, no traceback, and
nothing under results/ changed, not even in a finished study beside it.

The cases here are the table in the README's troubleshooting section."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import write_image_folder, write_parquet_dataset
from hpo.data import load_dataset
from hpo.lock import StudyLock

ROOT = Path(__file__).parents[1]
TINY = ROOT / "tests/spaces/tiny.py"


def hpo(*args, cwd, preexec_fn=None, hidden=()):
    """`hpo ARGS` in `cwd`, with the modules in `hidden` not importable (not installed)."""
    run = ["-m", "hpo.cli"] if not hidden else [
        "-c", f"import sys; sys.modules.update(dict.fromkeys({list(hidden)!r})); "
              "from hpo.cli import main; sys.exit(main())"]
    env = {k: v for k, v in os.environ.items() if k != "WANDB_PROJECT"}
    return subprocess.run([sys.executable, *run, *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, preexec_fn=preexec_fn)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, by path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_parquet):
    """A folder holding results/tiny, a finished 2-trial study of tests/spaces/tiny.py."""
    cwd = tmp_path_factory.mktemp("cli")
    out = hpo("search", TINY, "--data", tiny_parquet, "--num-cpus", 2, "--trials", 2,
              "--max-epochs", 1, cwd=cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    return cwd


@contextlib.contextmanager
def mounted(folder: Path, options: str):
    """A small tmpfs at `folder` (root only); yields False where mounting is not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs",
                                            str(folder)], capture_output=True).returncode:
        yield False
        return
    try:
        yield True
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def no_file_writes():
    # what a full disk does to the first write: Python ignores SIGXFSZ, so the write fails
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))


def bad_files(tmp: Path) -> dict[str, Path]:
    """Broken spaces, configs and datasets, each named for what is wrong with it."""
    good = TINY.read_text()
    files = {}

    def write(name: str, text: str) -> Path:
        files[name] = tmp / name
        files[name].write_text(text)
        return files[name]

    write("empty.py", "")
    write("syntax.py", "metric, mode = 'val_acc', 'max'\ndimensions = {\n")
    write("broken.py", "import nonexistent_module\n")
    write("partial.py", "metric, mode = 'val_acc', 'max'\n")
    write("dropout.py", good + "dimensions['dropout_1'] = 1.5\n")
    write("opt.py", good + "dimensions['optimizer'] = 'adamz'\n")
    write("other.py", good + "dimensions['width'] = 32\nname = 'tiny'\n")
    write("empty.json", "")
    write("notjson.json", "{'lr': 0.1}")
    write("list.json", "[1, 2]")
    write("unknown.json", json.dumps({"lr": 0.1, "dropuot_1": 0.2}))
    write("range.json", json.dumps({"lr": 0.1, "dropout_1": 2.0}))
    (tmp / "nodata").mkdir()
    files["nodata"] = tmp / "nodata"
    cut = write_parquet_dataset(tmp / "cut", n_train=50, n_test=10)
    data = (cut / "train.parquet").read_bytes()
    (cut / "train.parquet").write_bytes(data[: len(data) // 2])
    files["cut"] = cut
    nolabel = write_parquet_dataset(tmp / "nolabel", n_train=30, n_test=0)
    table = pq.read_table(nolabel / "train.parquet")
    pq.write_table(table.drop(["label"]).append_column("kind", pa.array(["x"] * len(table))),
                   nolabel / "train.parquet")
    files["nolabel"] = nolabel
    files["oneclass"] = write_image_folder(tmp / "oneclass", n_per_class=10, num_classes=1,
                                           with_test=False)
    badimage = write_image_folder(tmp / "badimage", n_per_class=5, num_classes=2)
    (badimage / "train/class0/00000.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    files["badimage"] = badimage
    files["other"] = write_parquet_dataset(tmp / "other", n_train=100, n_test=10, seed=5)
    (tmp / "afile").write_text("not a folder")
    files["afile"] = tmp / "afile"
    return files


def cases(tmp: Path, tiny: Path) -> list[tuple]:
    """(arguments, what the one line must say[, modules not installed]), run in a folder with
    results/tiny finished."""
    f = bad_files(tmp)
    search = ["search", TINY, "--data", tiny, "--num-cpus", 2]
    study = Path("results/tiny")
    return [
        # options out of range: argparse's own line, with the allowed range
        ([*search, "--trials", 0], "--trials: must be 1 or more, got 0"),
        ([*search, "--trials", "many"], "--trials: must be a whole number, got 'many'"),
        ([*search, "--max-epochs", -1, "--fraction", 0.05], "--max-epochs: must be 1 or more"),
        ([*search, "--grace-period", 0], "--grace-period: must be 1 or more"),
        ([*search, "--grace-period", 5], "--grace-period must be in 1..1 (the max epochs of a "
                                         "trial), got 5"),
        ([*search, "--fraction", 0], "--fraction: must be in (0, 1], got 0"),
        ([*search, "--fraction", 1.5], "--fraction: must be in (0, 1], got 1.5"),
        ([*search, "--gpus-per-trial", 0], "--gpus-per-trial: must be in (0, 64]"),
        ([*search, "--cpus-per-trial", -1], "--cpus-per-trial: must be in (0, 1024]"),
        ([*search, "--num-cpus", 0], "--num-cpus: must be 1 or more"),
        ([*search, "--concurrency", 0], "--concurrency: must be 1 or more"),
        ([*search, "--trials-per-gpu", 0], "--trials-per-gpu: must be 1 or more"),
        ([*search, "--checkpoint-every", -5], "--checkpoint-every: must be 0 or more, got -5"),
        ([*search, "--bogus"], "unrecognized arguments: --bogus"),
        # a tracker whose extra is not installed
        ([*search, "--log", "mlflow"], "--log mlflow: mlflow is not installed; install hpo's "
                                       "extra: pip install -e '.[mlflow]'", ["mlflow"]),
        ([*search, "--log", "wandb"], "--log wandb: wandb is not installed; install hpo's "
                                      "extra: pip install -e '.[wandb]'", ["wandb"]),
        ([*search, "--log", "wandb"], "--log wandb: no W&B project; pass --wandb-project or "
                                      "set WANDB_PROJECT"),
        # space files: missing, empty, corrupt, wrong values
        (["search", tmp / "missing.py", "--data", tiny], "missing.py: no such space file"),
        (["search", f["empty.py"], "--data", tiny], "empty.py: missing required name(s)"),
        (["search", f["syntax.py"], "--data", tiny], "syntax.py: could not import: SyntaxError"),
        (["search", f["broken.py"], "--data", tiny], "broken.py: could not import"),
        (["search", f["partial.py"], "--data", tiny], "partial.py: missing required name"),
        (["search", f["dropout.py"], "--data", tiny], "dropout_1 must be in [0.0, 0.6]"),
        (["search", f["opt.py"], "--data", tiny], "optimizer must be one of"),
        # data: missing, not a dataset, damaged
        (["search", TINY, "--data", tmp / "nowhere", "--name", "x"], "nowhere: does not exist"),
        (["search", TINY, "--data", f["nodata"], "--name", "x"], "no dataset hpo recognises"),
        (["search", TINY, "--data", f["cut"], "--name", "x"], "train.parquet: not a readable"),
        (["search", TINY, "--data", f["nolabel"], "--name", "x"], "no label column"),
        (["search", TINY, "--data", f["oneclass"], "--name", "x"], "only one class"),
        (["search", TINY, "--data", f["badimage"], "--name", "x"], "cannot"),
        # the finished study: another space, other settings, another driver holding it
        (["search", f["other.py"], "--data", tiny], "the space file differs"),
        ([*search, "--fraction", 0.5], "--fraction differs from this study's: recorded 1.0, "
                                       "given 0.5"),
        ([*search, "--seed", 3], "--seed differs from this study's: recorded 0, given 3"),
        ([*search, "--split-seed", 1], "--split-seed differs"),
        ([*search, "--max-epochs", 2], "--max-epochs differs from this study's: recorded 1"),
        (["search", TINY, "--data", f["other"]], "--data (the images themselves) differ from "
                                                 "the ones this study searched"),
        (["search", TINY, "--data", tiny, "--results", f["afile"]],
         "afile: is a file, not a folder"),
        # pretrained weights that are not there
        (["search", ROOT / "spaces/transfer.py", "--data", tiny, "--weights-dir", f["nodata"]],
         "pretrained weights convnext_tiny-983f1562.pth are not in"),
        (["search", ROOT / "spaces/transfer.py", "--data", tiny, "--weights-dir",
          tmp / "noweights"], "--weights-dir " + str(tmp / "noweights") + ": no such folder"),
        # configs and study folders given to the other commands
        (["train", f["empty.json"], "--data", tiny], "empty.json: the config file is empty"),
        (["train", f["notjson.json"], "--data", tiny], "notjson.json: not valid JSON (line 1"),
        (["train", f["list.json"], "--data", tiny], "must hold a JSON object {...}, not a list"),
        (["train", f["unknown.json"], "--data", tiny], "unknown.json: unknown config key "
                                                       "'dropuot_1'"),
        (["train", f["range.json"], "--data", tiny], "range.json: dropout_1 must be in"),
        (["train", tmp / "nope.json", "--data", tiny], "nope.json: no such config file"),
        (["train", study, "--point", "nosuch"], "no starting point 'nosuch'"),
        (["train", f["nodata"]], "not a study folder"),
        (["leaderboard", tmp / "nostudy"], "no leaderboard here"),
        (["export", study, "--rank", 99], "no trial at rank 99"),
        (["report", f["nodata"]], "not a study folder"),
        (["show", tmp / "missing.py"], "missing.py: no such space file"),
    ]


@pytest.mark.slow
def test_bad_input_fails_in_one_line_and_changes_nothing(finished, tiny_parquet, tmp_path):
    load_dataset(tiny_parquet)  # cached, so that no case decodes it again
    before = snapshot(finished / "results")
    for args, message, *hidden in cases(tmp_path, tiny_parquet):
        out = hpo(*args, cwd=finished, hidden=hidden[0] if hidden else ())
        lines = (out.stdout + out.stderr).strip().splitlines()
        assert out.returncode == 2, (args, out.stdout, out.stderr[-3000:])
        assert len(lines) == 1 and message in lines[0], (args, lines)
        assert snapshot(finished / "results") == before, args
    assert not (finished / "results/x").exists()


@pytest.mark.slow
def test_a_study_held_by_a_live_driver_is_refused_at_once(finished, tiny_parquet):
    before = snapshot(finished / "results")
    with StudyLock(finished / "results/tiny"):
        out = hpo("search", TINY, "--data", tiny_parquet, "--trials", 3, cwd=finished)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert "another hpo search is running this study" in lines[0]
    assert f"PID {os.getpid()}" in lines[0]
    assert snapshot(finished / "results") == before


@pytest.mark.slow
def test_read_only_and_full_results_folders(finished, tiny_parquet, tmp_path):
    load_dataset(tiny_parquet)
    search = ["search", TINY, "--data", tiny_parquet, "--num-cpus", 2]
    readonly = tmp_path / "ro"
    with mounted(readonly, "ro,size=64k") as done:
        if not done:
            readonly.chmod(0o555)
        out = hpo(*search, "--results", readonly, cwd=finished)
        assert out.returncode == 2 and "cannot write here" in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and not list(readonly.iterdir())
    full = tmp_path / "full"
    with mounted(full, "size=64k") as done:
        if done:  # fill it to the last block
            with contextlib.suppress(OSError), open(full / "filler", "wb") as f:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
        before = snapshot(full)
        out = hpo(*search, "--results", full, cwd=finished,
                  preexec_fn=None if done else no_file_writes)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1, out.stderr[-3000:]
        assert "cannot write" in lines[0], lines
        assert snapshot(full) == before


def test_show_prints_dimensions_and_starting_point_sizes(tmp_path):
    out = hpo("show", ROOT / "spaces/cifar10.py", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for text in ("optimizer", "basenet", "23,432", "273,108", "15,438,986"):
        assert text in out.stdout
