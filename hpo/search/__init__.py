"""The search driver: the only package that imports Ray.

Optuna's TPE proposes configs (define-by-run over the space file), ASHA stops the weak ones
at its rungs, Ray Tune runs the trials, and a callback keeps the leaderboard and the progress
view current. The dataset is decoded once here and shipped to trials through Ray's object store.

    options     what the command line asks, checked before anything is created
    driver      a study from start to end: Ray up, Tune experiments run or restored
    searcher    Optuna's TPE behind Tune's searcher interface, told PRUNED/FAIL honestly
    trainable   Ray's side of one trial: run_trial reporting to Tune, checkpoints
    observer    the driver's callback: leaderboard, progress view, timings, memory seen
    placement   what each trial asks Ray for: CPUs and a share of a GPU
    cluster     joining a running cluster: its Ray and Python must be this process's
"""

from hpo.search.driver import run_search
from hpo.search.options import SearchOptions, StudyError, prepare

__all__ = ["SearchOptions", "StudyError", "prepare", "run_search"]
