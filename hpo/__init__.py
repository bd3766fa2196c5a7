"""hpo: hyperparameter search for image-classification CNNs (Optuna TPE + ASHA on Ray Tune).

The pieces a user or a test calls directly; none of them imports Ray (the hpo.search package does).
"""

from hpo.data import Dataset, load_dataset
from hpo.leaderboard import read_leaderboard
from hpo.model import build_model, count_parameters
from hpo.space import load_space
from hpo.train import run_trial

__all__ = ["Dataset", "build_model", "count_parameters", "load_dataset", "load_space",
           "read_leaderboard", "run_trial"]
