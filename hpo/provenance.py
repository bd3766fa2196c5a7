"""When a result was made and with what: the timestamps and library versions recorded beside
every run of a study and every final retrain."""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from importlib import metadata


def now() -> str:
    """The time, UTC, to the second (ISO 8601)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def versions() -> dict[str, str]:
    """Versions of what shapes a result, as installed (none of them imported)."""
    out = {"python": sys.version.split()[0]}
    for package in ("torch", "optuna", "pandas", "ray"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return out
