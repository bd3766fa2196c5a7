"""hpo from Python, for notebooks and scripts: `search` runs a study as `hpo search` does,
`load` opens one, and a `Study` reads its results, retrains its best and writes its report.

    >>> import hpo
    >>> study = hpo.search("spaces/cifar10.py", data="data/cifar10", trials=8, max_epochs=4)
    >>> study.leaderboard.head()          # pandas, read fresh from leaderboard.csv
    >>> study.train(seeds=3)              # hpo train: the best config on train+val, tested
    >>> study.report()                    # report.html

Nothing here imports torch or Ray until a search or a retrain starts.
"""

from __future__ import annotations

import html
import os
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from hpo.config import read_config
from hpo.folder import StudyFolder
from hpo.lock import StudyLock
from hpo.study import load_study_space, read_meta

if TYPE_CHECKING:
    import pandas as pd


def search(space: str | os.PathLike, **options: Any) -> Study:
    """Run the study of the space file `space`, or continue it, exactly as `hpo search`
    does: the same folder (`results/<study>`), lock, resume and files. The keyword arguments
    are `hpo.options.SearchOptions`' fields, the command line's options with underscores
    (data=, trials=, max_epochs=, fraction=, name=, fresh=, num_cpus=, log=("mlflow",),
    verbose=, ...; time_budget= and node_wait= are in seconds). Returns the Study.

    Raises an hpo.errors.HpoError (a ValueError) with the command line's one-line message
    for a bad value, file or study, before anything is written; TypeError for an unknown
    keyword; KeyboardInterrupt after the notebook's Stop (or Ctrl-C), once everything is saved
    (the same call continues the study). In Jupyter the live view is the cell's output; Ray's
    output goes to `results/<study>/ray.log`.
    """
    from hpo.options import SearchOptions, from_keywords
    from hpo.study import run_study

    checked = from_keywords(SearchOptions, options, "hpo.search")
    study = Study(run_study(space, checked, console=_cell_console()))
    if checked.final and study.best_config is not None:
        study.train(checked.seeds, weights_dir=checked.weights_dir)
    return study


def load(folder: str | os.PathLike) -> Study:
    """Open the study in `folder` (`results/<study>`), finished or running. Reading it takes
    no lock: a Study reads the files a running search replaces whole."""
    return Study(folder)


class Study:
    """A study folder, finished or still running. Every attribute reads the folder afresh.

    `leaderboard` (leaderboard.csv), `trials` (epochs.csv: every epoch of every trial),
    `best_config` (best.json) and `meta` (study.json) only read; `train` and `report` write
    what `hpo train` and `hpo report` write. In Jupyter a Study shows as a summary table.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        StudyFolder(self.folder).check()

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def meta(self) -> dict[str, Any]:
        """study.json: identity, options, runs, timings (docs/reference/study-folder.md)."""
        return read_meta(self.folder)

    @property
    def leaderboard(self) -> pd.DataFrame:
        """One row per trial, best first (docs/guide/leaderboard.md)."""
        from hpo.leaderboard import read_leaderboard

        return read_leaderboard(self.folder)

    @property
    def trials(self) -> pd.DataFrame:
        """The learning curves: one row per epoch per trial (trial_id, epoch, val_acc,
        val_loss, train_loss, img_per_s, ...), empty before the first epoch ends."""
        import pandas as pd

        from hpo.views import EPOCH_COLUMNS

        path = StudyFolder(self.folder).epochs
        return pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=EPOCH_COLUMNS)

    @property
    def best_config(self) -> dict[str, Any] | None:
        """The best finished trial's complete config (best.json); None before one ends."""
        path = StudyFolder(self.folder).best_config
        return read_config(path) if path.is_file() else None

    def train(self, seeds: int = 3, points: Sequence[str] = (), *,
              data: str | os.PathLike | None = None, fraction: float | None = None,
              epochs: int | None = None, out: str | os.PathLike | None = None,
              weights_dir: str | os.PathLike | None = None, ensemble: int | None = None,
              ensemble_of: str | None = None, console=None) -> dict[str, Any]:
        """`hpo train`: retrain the best config (or each starting point named in `points`)
        on train + validation for its full epochs, once per seed 0..seeds-1, and test each
        model once. Writes `<study>/final/` (or `out`) and returns its results.json: the best's
        summary at the top, starting points' under "starting_points", an ensemble's under
        "ensemble". `data` and `fraction` override the study's (e.g. the full data after a
        search on a fraction); `weights_dir` is where pretrained backbones' weights are
        (hpo.weights). `ensemble=K` retrains K models instead and tests their averaged
        prediction once: `ensemble_of` "configs" (the top K completed configs) or "seeds"
        (the best config's seeds 0..K-1; default: `hpo train`'s)."""
        from hpo.final import train
        from hpo.options import TrainOptions, from_keywords

        points = (points,) if isinstance(points, str) else tuple(points)
        options = from_keywords(TrainOptions, dict(
            target=str(self.folder), seeds=seeds, point=points,
            data=None if data is None else os.fspath(data), fraction=fraction, epochs=epochs,
            out=None if out is None else os.fspath(out),
            weights_dir=None if weights_dir is None else os.fspath(weights_dir),
            ensemble=ensemble, **({"ensemble_of": ensemble_of} if ensemble_of else {})),
            "Study.train")
        return train(options, console or _notebook_text_console())

    def report(self, show: bool = True) -> Path:
        """`hpo report`: write `<study>/report.html` and return its path; in a notebook (with
        `show`) the page is shown in the cell too (it is self-contained)."""
        from hpo.report import write_report

        path = write_report(self.folder)
        if show and _cell_console() is not None:
            from IPython.display import HTML, display

            page = html.escape(path.read_text(), quote=True)
            display(HTML(f'<p>{html.escape(str(path))}</p><iframe srcdoc="{page}" '
                         'style="width:100%;height:640px;border:1px solid #ccc"></iframe>'))
        return path

    def __repr__(self) -> str:
        """The study at a glance, in plain text: name and state, trials by status, the best,
        where its files are."""
        width = max(len(k) for k, _ in _summary(self))
        return "\n".join(f"{k:<{width}}  {v}" for k, v in _summary(self))

    def _repr_html_(self) -> str:
        e = html.escape
        body = "".join(f'<tr><th style="text-align:left;vertical-align:top">{e(k)}</th>'
                       f'<td style="text-align:left">{e(v)}</td></tr>'
                       for k, v in _summary(self))
        return f"<table>{body}</table>"


def _summary(study: Study) -> list[tuple[str, str]]:
    """A study in rows of (what, says): name and state, trials by status, best value and
    config, where its files are."""
    from hpo import fmt  # pandas: only once a study is shown
    from hpo.errors import HpoError
    from hpo.leaderboard import metric_of
    from hpo.status import FINISHED

    meta = study.meta
    board = study.leaderboard if (study.folder / "leaderboard.csv").is_file() else None
    holder = StudyLock(study.folder).holder()
    state = (f"running ({holder})" if holder else
             "finished" if meta.get("finished") else "stopped (the same search continues it)")
    rows = [("study", f"{study.name} · {state}")]
    if board is not None and len(board):
        counts = Counter(board["status"])
        rows.append(("trials", f"{len(board)} of {meta.get('trials', '?')}: " + ", ".join(
            f"{counts[status]} {status}" for status in sorted(counts, key=lambda s: (
                -counts[s], s)))))
        metric = metric_of(board.columns)
        top = board.iloc[0]
        if top["status"] in FINISHED and top[metric] == top[metric]:
            point = f", starting point {top['point']}" if isinstance(top["point"], str) else ""
            rows.append((f"best {metric}", f"{fmt.metric(top[metric])} (trial "
                                           f"{top['trial_id']}{point})"))
    best = study.best_config
    if best:
        try:  # the values the search chose; the rest is fixed or default (best.json has all)
            searched = [k for k in load_study_space(study.folder).searched() if k in best]
        except HpoError:
            searched = list(best)
        rows.append(("best config", ", ".join(
            f"{k}={fmt.column(k, [best[k]])[0]}" for k in searched or best)))
    folder = StudyFolder(study.folder)
    files = [p.name for p in (folder.leaderboard, folder.epochs, folder.best_config,
                              folder.best_weights, folder.report, folder.final, folder.ray_log)
             if p.exists()]
    rows.append(("files", f"{study.folder}/: " + ", ".join(files)))
    return rows


def _cell_console():
    """A rich Console drawing into the running Jupyter cell; None outside Jupyter (the
    search then draws on the terminal, as `hpo search` does)."""
    if "IPython" not in sys.modules:
        return None
    from rich.console import Console

    console = Console()
    return console if console.is_jupyter else None


def _notebook_text_console():
    """In Jupyter, a plain-text Console into the cell (rich's bars in a notebook need
    ipywidgets, and show nothing without them); None elsewhere (the terminal's)."""
    if _cell_console() is None:
        return None
    from rich.console import Console

    return Console(file=sys.stdout, force_jupyter=False, force_terminal=False, width=100)
