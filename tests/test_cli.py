"""Bad input: one line naming the option, file or setting, exit status 2, no traceback, and
nothing under results/ changed, not even in the finished study beside it. The cases are
tests/mistakes.py's table, which the docs' troubleshooting page prints."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mistakes import MISTAKES, Made

from conftest import TINY, hpo_command
from hpo.cli import main
from hpo.lock import StudyLock


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, by path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_parquet):
    return Made(tmp_path_factory.mktemp("mistakes"), tiny_parquet)


def run_here(argv, capsys) -> tuple[int, list[str]]:
    """`hpo ARGV` in this process: (exit status, the lines it printed)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's refusals
        code = exc.code
    out = capsys.readouterr()
    return code, (out.out + out.err).strip().splitlines()


@pytest.mark.parametrize("mistake", MISTAKES, ids=[m.typed for m in MISTAKES])
def test_a_mistake_is_one_line_and_changes_nothing(mistake, made, finished_study, capsys,
                                                   monkeypatch):
    monkeypatch.chdir(finished_study.cwd)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    monkeypatch.delenv("HPO_WEIGHTS_DIR", raising=False)  # --weights-dir sets it for trials
    for module in mistake.hidden:  # an extra that is not installed
        monkeypatch.setitem(sys.modules, module, None)
    before = snapshot(finished_study.cwd / "results")
    code, lines = run_here(mistake.args(made), capsys)
    assert code == 2 and len(lines) == 1, lines
    assert mistake.says in lines[0], lines
    assert snapshot(finished_study.cwd / "results") == before
    assert not (finished_study.cwd / "results/x").exists()


def test_a_mistake_imports_neither_torch_nor_ray(made, finished_study):
    code = ("import sys; from hpo.cli import main; rc = main(sys.argv[1:]); "
            "print(sorted({'torch', 'ray'} & set(sys.modules))); sys.exit(rc)")
    shown = {m.typed: m for m in MISTAKES}
    for mistake in (shown["hpo search s.py --seed 3"], shown["hpo search empty.py (an empty "
                    "file)"], shown["hpo search s.py --data oneclass (one class folder)"]):
        args = [str(a) for a in mistake.args(made)]
        out = subprocess.run([sys.executable, "-c", code, *args], cwd=finished_study.cwd,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and out.stdout.strip() == "[]", (args, out)


def test_a_bug_shows_its_traceback_and_says_it_is_one(monkeypatch, capsys, finished_study):
    def broken(args):
        raise KeyError("something hpo did not expect")

    monkeypatch.setattr("hpo.cli.cmd_report", broken)  # the parser is built at each main()
    code = main(["report", str(finished_study.folder)])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" in err and "KeyError" in err
    assert err.strip().splitlines()[-1].startswith("hpo: this is a bug in hpo")


def test_a_study_held_by_a_live_driver_is_refused_at_once(finished_study, tiny_parquet, capsys,
                                                         monkeypatch):
    monkeypatch.chdir(finished_study.cwd)
    before = snapshot(finished_study.cwd / "results")
    with StudyLock(finished_study.folder):
        code, lines = run_here(["search", TINY, "--data", tiny_parquet, "--trials", 7], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert "another hpo search is running this study" in lines[0]
    assert f"PID {os.getpid()}" in lines[0]
    assert snapshot(finished_study.cwd / "results") == before


def test_a_lost_record_is_refused_naming_the_file(finished_study, tmp_path, capsys,
                                                  monkeypatch):
    copy = tmp_path / "results/tiny"
    shutil.copytree(finished_study.folder, copy)
    (copy / "study.db").unlink()
    before = snapshot(tmp_path / "results")
    monkeypatch.chdir(tmp_path)
    code, lines = run_here(["search", TINY], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert "results/tiny/study.db: the study's record is missing" in lines[0]
    assert snapshot(tmp_path / "results") == before


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


def test_read_only_and_full_results_folders(finished_study, tiny_parquet, tmp_path):
    search = ["search", TINY, "--data", tiny_parquet, "--num-cpus", 2]
    readonly = tmp_path / "ro"
    with mounted(readonly, "ro,size=64k") as done:
        if not done:
            readonly.chmod(0o555)
        out = hpo_command(*search, "--results", readonly, cwd=tmp_path)
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
        out = subprocess.run([sys.executable, "-m", "hpo.cli", *map(str, search), "--results",
                              full], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                             preexec_fn=None if done else no_file_writes)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1, out.stderr[-3000:]
        assert "cannot write" in lines[0] or "No space left" in lines[0], lines
        assert snapshot(full) == before


def test_show_prints_dimensions_and_starting_point_sizes(tmp_path):
    out = hpo_command("show", Path(__file__).parents[1] / "spaces/cifar10.py", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for text in ("optimizer", "basenet", "23,432", "273,108", "15,438,986"):
        assert text in out.stdout
