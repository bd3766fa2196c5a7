"""Result files as users expect them: replaced whole, readable as the user's umask allows.

Every file hpo writes under results/ (and the dataset cache) goes through `replace_file`: the
bytes go to a temporary name in the same folder, are fsynced, get the permissions a plain
`open()` would have given them, and are renamed over the old file. A reader sees the previous
version or the next, never part of one, and a crash or a power cut leaves one of the two.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from hpo.errors import ConfigError


def _read_umask() -> int:
    # /proc tells without changing it; os.umask() sets it while it reads, which another thread
    # creating a file at that moment would see
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _read_umask()  # read once, at import, before Ray or torch start threads


@contextlib.contextmanager
def replace_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Yield a binary file whose content replaces `path` when the block ends without error
    (fsync, then one atomic rename); on error `path` is untouched and nothing is left behind.
    The file gets mode 0666 minus the umask, as `open(path, "w")` would create it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~UMASK)  # mkstemp creates 0600
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    # the rename itself is durable only once the folder's entry is on disk
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def cache_dir() -> Path:
    """Where decoded datasets and a frozen backbone's features are kept between studies:
    $HPO_CACHE, else ~/.cache/hpo."""
    return Path(os.environ.get("HPO_CACHE") or Path.home() / ".cache" / "hpo")


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Replace `path` with `data` (str as UTF-8) through `replace_file`."""
    with replace_file(path) as f:
        f.write(data.encode() if isinstance(data, str) else data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """`obj` as indented JSON, through `replace_file`."""
    write_atomic(path, json.dumps(obj, indent=2) + "\n")


def read_json_object(path: str | os.PathLike, what: str = "JSON file") -> dict[str, Any]:
    """The JSON object in `path`. Raises ConfigError with one line naming the file when it is
    missing, empty, not JSON, or not an object."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {what}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read this {what} ({exc})") from None
    if not text.strip():
        raise ConfigError(f"{path}: the {what} is empty")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: "
                          f"{exc.msg})") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{path}: the {what} must hold a JSON object {{...}}, "
                          f"not a {type(obj).__name__}")
    return obj
