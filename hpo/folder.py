"""A study folder, results/<study>/: the name of every file in it, said once.

Every reader and writer of a study's files takes their paths from a `StudyFolder`; the docs'
table of a study folder's files is made from `FILES`.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from hpo.errors import StudyError


@dataclass(frozen=True)
class File:
    name: str
    what: str
    startup: bool = False  # made before the study's record is: adoptable by the same command


FILES = {f.name: f for f in (
    File("study.db", "the study's record: Optuna's study in SQLite (unless --storage names "
         "another database). Everything below is rebuilt from it", startup=True),
    File("study.json", "identity, options, runs, timings and trial counts (a view of the "
         "record)"),
    File("space.py", "the space file the study searched, as it was"),
    File("leaderboard.csv", "one row per trial, best first (a view of the record)"),
    File("epochs.csv", "every epoch of every trial: the learning curves (a view)"),
    File("configs.json", "each trial's complete config, types intact (a view)"),
    File("best.json", "the best finished trial's complete config (a view)"),
    File("best.pt", "the best finished trial's weights at its best epoch"),
    File("ray", "Ray Tune's folder: trial-<n>/ with each trial's results, checkpoints while "
         "it may be continued, and error.txt when it crashed"),
    File("ray.log", "everything Ray, Tune and the libraries they load printed", startup=True),
    File("report.html", "hpo report's page"),
    File("final", "hpo train's retrained models and results.json"),
    File("wandb", "W&B's run files with --log wandb"),
    File(".lock", "held by the driver running the study", startup=True),
)}
TEMP_SUFFIX = ".tmp"  # hpo.files writes .<name>.<random>.tmp, then renames it


class StudyFolder:
    """The paths of one study's files (`folder.leaderboard`, `folder.record`, ...)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"StudyFolder({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.path / FILES[name].name

    @property
    def name(self) -> str:
        return self.path.name

    record = property(lambda self: self / "study.db")
    meta = property(lambda self: self / "study.json")
    space = property(lambda self: self / "space.py")
    leaderboard = property(lambda self: self / "leaderboard.csv")
    epochs = property(lambda self: self / "epochs.csv")
    configs = property(lambda self: self / "configs.json")
    best_config = property(lambda self: self / "best.json")
    best_weights = property(lambda self: self / "best.pt")
    experiment = property(lambda self: self / "ray")
    ray_log = property(lambda self: self / "ray.log")
    report = property(lambda self: self / "report.html")
    final = property(lambda self: self / "final")
    lock = property(lambda self: self / ".lock")

    def views(self) -> list[Path]:
        """The files rebuilt from the record that exist now."""
        return [p for p in (self.meta, self.leaderboard, self.epochs, self.configs,
                            self.best_config) if p.exists()]

    def startup_only(self) -> bool:
        """Whether the folder holds nothing but files a start of hpo makes before the study
        has a record (the lock, ray.log, temporaries): what a killed start leaves, which the
        same command takes over."""
        return all(_is_temp(p) or (p.name in FILES and FILES[p.name].startup)
                   for p in self.path.iterdir())

    def clear_temps(self) -> None:
        """Delete the temporaries a killed write left (only the driver holding the lock may:
        a live writer's are in use)."""
        for p in self.path.iterdir():
            if _is_temp(p):
                with contextlib.suppress(OSError):
                    p.unlink()

    def check_exists(self) -> None:
        """Raise StudyError unless the folder exists."""
        if not self.path.is_dir():
            raise StudyError(f"{self.path}: no such study folder")

    def check(self) -> None:
        """Raise StudyError unless this is a study folder `hpo search` made."""
        if not self.path.is_dir():
            raise StudyError(f"{self.path}: no such study folder")
        if not self.meta.is_file() and not self.leaderboard.is_file():
            raise StudyError(f"{self.path}: not a study folder (no study.json or "
                             "leaderboard.csv)")


def _is_temp(p: Path) -> bool:
    return p.name.startswith(".") and p.name.endswith(TEMP_SUFFIX)
