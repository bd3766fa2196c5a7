"""hpo: hyperparameter search for image-classification CNNs (Optuna TPE + ASHA on Ray Tune).

The pieces a user or a test calls directly: `search`, `load` and `Study` for notebooks and
scripts (hpo.api), and the parts a trial is made of. They load on first use, so `import hpo`,
`import hpo.space` or `hpo --help` imports neither torch nor Ray (hpo.search starts Ray).
"""

import importlib
import warnings

# Optuna loads tqdm.auto, which in a notebook without ipywidgets warns that it cannot draw the
# progress bars hpo never asks it for
warnings.filterwarnings("ignore", message="IProgress not found")

_HOMES = {"search": "hpo.api", "load": "hpo.api", "Study": "hpo.api",
          "Dataset": "hpo.data", "load_dataset": "hpo.data",
          "read_leaderboard": "hpo.leaderboard", "build_model": "hpo.model",
          "count_parameters": "hpo.model", "load_space": "hpo.space", "run_trial": "hpo.train"}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'hpo' has no attribute {name!r}")
