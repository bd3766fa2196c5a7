"""Bad input: one line naming the file and the problem, exit status 2, nothing under results/."""

import subprocess
import sys
from pathlib import Path

from conftest import write_parquet_dataset

ROOT = Path(__file__).parents[1]


def hpo(*args, cwd):
    return subprocess.run([sys.executable, "-m", "hpo.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def bad_inputs(tmp: Path, tiny: Path):
    (tmp / "broken.py").write_text("import nonexistent_module\n")
    (tmp / "partial.py").write_text("metric, mode = 'val_acc', 'max'\n")
    good = (ROOT / "tests/spaces/tiny.py").read_text()
    (tmp / "dropout.py").write_text(good + "dimensions['dropout_1'] = 1.5\n")
    (tmp / "lr.py").write_text(good + "dimensions['lr'] = -0.1\n")
    (tmp / "opt.py").write_text(good + "dimensions['optimizer'] = 'adamz'\n")
    (tmp / "empty").mkdir()
    cut = tmp / "cut"
    write_parquet_dataset(cut, n_train=50, n_test=10)
    data = (cut / "train.parquet").read_bytes()
    (cut / "train.parquet").write_bytes(data[: len(data) // 2])
    space = ROOT / "tests/spaces/tiny.py"
    return [
        (["search", tmp / "missing.py", "--data", tiny], "missing.py: no such space file"),
        (["search", tmp / "broken.py", "--data", tiny], "broken.py: could not import"),
        (["search", tmp / "partial.py", "--data", tiny], "partial.py: missing required name"),
        (["search", tmp / "dropout.py", "--data", tiny], "dropout_1 must be in"),
        (["search", tmp / "lr.py", "--data", tiny], "lr must be in"),
        (["search", tmp / "opt.py", "--data", tiny], "optimizer must be one of"),
        (["search", space, "--data", tmp / "empty"], "empty: no dataset hpo recognises"),
        (["search", space, "--data", cut], "train.parquet"),
        (["search", space, "--data", tiny, "--bogus"], "unrecognized arguments: --bogus"),
    ]


def test_bad_input_fails_in_one_line_and_leaves_nothing(tmp_path, tiny_parquet):
    for args, message in bad_inputs(tmp_path, tiny_parquet):
        out = hpo(*args, cwd=tmp_path)
        assert out.returncode == 2, (args, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, out.stderr)
        assert not (tmp_path / "results").exists(), args


def test_show_prints_dimensions_and_starting_point_sizes(tmp_path):
    out = hpo("show", ROOT / "spaces/cifar10.py", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for text in ("optimizer", "basenet", "23,432", "273,108", "15,438,986"):
        assert text in out.stdout
