"""What Ray, Tune and the libraries they load print, sent to the study's ray.log instead of the
terminal, where hpo's own live view is the only thing shown.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

from rich.console import Console


@contextlib.contextmanager
def output_to(log_path: Path, console: Console | None = None, verbose: bool = False):
    """While the block runs, send what Ray, Tune and the libraries they call print to
    `log_path`: fds 1 and 2 (Ray's processes inherit them), Python's sys.stdout and sys.stderr
    and the logging handlers that write to them (a notebook's streams are not fds 1 and 2).
    Yield `console`, or a rich Console on the original fd 1, for our own view; with
    `verbose`, that output is also printed there (above a live view), and still logged."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    terminal = None
    if console is None:
        terminal = os.fdopen(os.dup(saved_out), "w", buffering=1)
        # a line in a log stays one line; on a terminal rich wraps it between words
        console = Console(file=terminal, soft_wrap=not terminal.isatty())
    log = open(log_path, "ab", buffering=0)
    echo = None
    if verbose:
        read_end, target = os.pipe()
        echo = _Echo(read_end, log, console)
    else:
        target = log.fileno()
    stream = os.fdopen(os.dup(target), "w", buffering=1, errors="replace")
    streams = sys.stdout, sys.stderr
    os.dup2(target, 1)
    os.dup2(target, 2)
    sys.stdout = sys.stderr = stream
    handlers = _point_handlers({*streams, sys.__stdout__, sys.__stderr__}, stream)
    try:
        yield console
    finally:
        # the terminal comes back first, whatever else fails: on a full disk the log takes
        # no more (a flush raises), and what went wrong must still reach the user
        sys.stdout, sys.stderr = streams
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        for fd in (saved_out, saved_err):
            os.close(fd)
        # handlers made meanwhile (a library imported in the block) write to `stream` too
        _point_handlers({stream}, streams[1])
        for handler, before in handlers:
            with contextlib.suppress(OSError):  # setStream flushes the log's stream
                handler.setStream(before)
        with contextlib.suppress(OSError):
            stream.close()
        if echo:
            os.close(target)
            echo.stop()
        else:
            with contextlib.suppress(OSError):
                log.close()
        if terminal:
            terminal.close()


def _point_handlers(streams: set, stream) -> list[tuple[logging.StreamHandler, Any]]:
    """Point every logging handler that writes to one of `streams` at `stream`; return each
    with the stream it had."""
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in
                                      list(logging.root.manager.loggerDict))]
    moved = []
    for handler in {h for lg in loggers for h in lg.handlers}:
        if (isinstance(handler, logging.StreamHandler)
                and not isinstance(handler, logging.FileHandler)
                and any(handler.stream is s for s in streams if s is not None)):
            before = handler.stream
            with contextlib.suppress(OSError):  # setStream flushes the stream it replaces
                handler.setStream(stream)
            moved.append((handler, before))
    return moved


class _Echo:
    """--verbose: a thread copying what is written to the pipe `read_end` to `log` and, line
    by line, to `console`. After `stop` it only logs, until the last writer (a Ray process
    that outlives the block) closes the pipe."""

    def __init__(self, read_end: int, log, console: Console):
        self.read_end, self.log, self.console = read_end, log, console
        self.showing = True
        self.thread = threading.Thread(target=self._run, daemon=True, name="hpo-echo")
        self.thread.start()

    def _run(self) -> None:
        pending = b""
        while chunk := os.read(self.read_end, 65536):
            self.log.write(chunk)
            pending += chunk
            *lines, pending = pending.split(b"\n")
            if lines and self.showing:
                self.console.print("\n".join(line.decode(errors="replace") for line in lines),
                                   markup=False, highlight=False, soft_wrap=True)
        os.close(self.read_end)
        self.log.close()

    def stop(self) -> None:
        self.thread.join(timeout=1.0)  # what is already in the pipe still shows
        self.showing = False
