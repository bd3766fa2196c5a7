"""One driver per study: an exclusive lock on results/<study>/.lock.

The lock is the kernel's (flock), not the file's existence: it goes when its process goes,
however it goes (Ctrl-C, SIGKILL, a crash), so a lock left by a dead driver is simply taken
over. On NFS v4 the same call takes a lease the server drops when the client machine is lost.
The file holds the holder's host, PID and start time, for the message the next driver prints.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from datetime import datetime, timezone
from pathlib import Path

from hpo.errors import StudyLocked


class StudyLock:
    """`with StudyLock(folder):` holds the study for this process. Creates the folder (and
    its parents) if missing; on leaving, removes the lock file and any folder it created that
    is still empty, so a refused or failed start leaves results/ as it was."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / ".lock"
        self._fd: int | None = None
        self._created: list[Path] = []
        self.created = False

    def holder(self) -> str | None:
        """Who holds the study now ("host H, PID P, since T"), or None when nobody does.
        Creates nothing."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _describe(self.path)
        finally:
            os.close(fd)  # closing drops the probe's shared lock too
        return None

    def __enter__(self) -> StudyLock:
        missing = [p for p in (self.folder, *self.folder.parents) if not p.exists()]
        self.folder.mkdir(parents=True, exist_ok=True)
        self._created = missing  # deepest first: the order rmdir needs
        self.created = self.folder in missing  # this process made the study's folder
        try:
            self._take()
        except BaseException:
            self._remove_created()
            raise
        return self

    def _take(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise StudyLocked(f"{self.folder}: another hpo search is running this study "
                                  f"({_describe(self.path)}); wait for it to end, or stop it "
                                  "(Ctrl-C), or pass --name for a study of its own") from None
            # the holder we waited behind may have removed the file after we opened it: then
            # we lock a file nobody else will see, and must start over with the new one
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            started = datetime.now(timezone.utc).isoformat(timespec="seconds")
            os.ftruncate(fd, 0)
            os.write(fd, f"host {socket.gethostname()}, PID {os.getpid()}, since {started}\n"
                     .encode())
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            os.close(fd)
            raise
        self._fd = fd

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)  # unlinked while locked: see the inode check in _take
            os.close(self._fd)
            self._fd = None
        self._remove_created()

    def _remove_created(self) -> None:
        for folder in self._created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty: a study that started keeps its folder
        self._created = []


def _describe(path: Path) -> str:
    try:
        return path.read_text().strip() or "holder unknown"
    except OSError:
        return "holder unknown"
