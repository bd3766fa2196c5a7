"""When a result was made and with what: the timestamps and library versions recorded beside
every run of a study and every final retrain."""

from __future__ import annotations

import sys
from datetime import datetime, timezone


def now() -> str:
    """The time, UTC, to the second (ISO 8601)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def versions() -> dict[str, str]:
    """Versions of what shapes a result."""
    import optuna
    import pandas
    import torch

    out = {"python": sys.version.split()[0], "torch": torch.__version__,
           "optuna": optuna.__version__, "pandas": pandas.__version__}
    try:
        import ray

        out["ray"] = ray.__version__
    except ImportError:
        pass
    return out
