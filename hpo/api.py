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

import dataclasses
import html
import os
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from hpo.config import read_config
from hpo.files import read_json_object
from hpo.lock import StudyLock
from hpo.study import check_study_folder, load_study_space, read_meta
from hpo.tuning.options import check_data_path
from hpo.weights import check_weights

if TYPE_CHECKING:
    import pandas as pd


def search(space: str | os.PathLike, **options: Any) -> Study:
    """Run the study of the space file `space`, or continue it, exactly as `hpo search`
    does: the same folder (results/<study>), lock, resume and files. The keyword arguments
    are hpo.tuning.SearchOptions' fields, the command line's options with underscores
    (data=, trials=, max_epochs=, fraction=, name=, fresh=, num_cpus=, log=("mlflow",),
    verbose=, ...; time_budget= is in seconds). Returns the Study.

    Raises hpo.tuning.StudyError (a ValueError) with the command line's one-line message for a
    bad value, file or study, before anything is written; TypeError for an unknown keyword;
    KeyboardInterrupt after the notebook's Stop (or Ctrl-C), once everything is saved (the
    same call continues the study). In Jupyter the live view is the cell's output; Ray's
    output goes to results/<study>/ray.log.
    """
    from hpo.tuning import SearchOptions, run_study

    fields = [f.name for f in dataclasses.fields(SearchOptions)]
    unknown = [name for name in options if name not in fields]
    if unknown:
        raise TypeError(f"hpo.search: no option {unknown[0]!r} (options: {', '.join(fields)})")
    return Study(run_study(space, SearchOptions(**options), console=_cell_console()))


def load(folder: str | os.PathLike) -> Study:
    """Open the study in `folder` (results/<study>), finished or running. Reading it takes
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
        check_study_folder(self.folder)

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def meta(self) -> dict[str, Any]:
        """study.json: identity, options, runs, timings (results/README.md)."""
        return read_meta(self.folder)

    @property
    def leaderboard(self) -> pd.DataFrame:
        """One row per trial, best first (README, "Reading the leaderboard")."""
        from hpo.leaderboard import read_leaderboard

        return read_leaderboard(self.folder)

    @property
    def trials(self) -> pd.DataFrame:
        """The learning curves: one row per epoch per trial (trial_id, epoch, val_acc,
        val_loss, train_loss, img_per_s, ...), empty before the first epoch ends."""
        import pandas as pd

        from hpo.leaderboard import EPOCH_COLUMNS

        path = self.folder / "epochs.csv"
        return pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=EPOCH_COLUMNS)

    @property
    def best_config(self) -> dict[str, Any] | None:
        """The best finished trial's complete config (best.json); None before one ends."""
        path = self.folder / "best.json"
        return read_config(path) if path.is_file() else None

    def train(self, seeds: int = 3, points: Sequence[str] = (), *,
              data: str | os.PathLike | None = None, fraction: float | None = None,
              epochs: int | None = None, out: str | os.PathLike | None = None,
              weights_dir: str | os.PathLike | None = None, console=None) -> dict[str, Any]:
        """`hpo train`: retrain the best config (or each starting point named in `points`)
        on train + validation for its full epochs, once per seed 0..seeds-1, and test each
        model once. Writes <study>/final/ (or `out`) and returns its results.json: the best's
        summary at the top, starting points' under "starting_points". `data` and `fraction`
        override the study's (e.g. the full data after a search on a fraction);
        `weights_dir` is where pretrained backbones' weights are (hpo.weights)."""
        points = [points] if isinstance(points, str) else list(points)
        space = load_study_space(self.folder)
        unknown = [n for n in points if n not in space.starting_points]
        if unknown:
            raise ValueError(f"{self.folder}: no starting point {unknown[0]!r} in its space "
                             f"(it has: {', '.join(space.starting_points) or 'none'})")
        best = None if points else read_config(self.folder / "best.json")
        data = None if data is None else os.fspath(data)
        check_data_path(data)
        check_weights([space.point(n) for n in points] or [best],
                      None if weights_dir is None else os.fspath(weights_dir))

        from hpo.final import retrain
        from hpo.study import load_study_data

        space, dataset = load_study_data(self.folder, data, fraction)
        folder = Path(out or self.folder / "final")
        for name, config in [(n, space.point(n)) for n in points] or [("best", best)]:
            if epochs:
                config = {**config, "epochs": epochs}
            retrain(config, dataset, range(seeds), folder, name,
                    console or _notebook_text_console())
        return read_json_object(folder / "results.json", "results file")

    def report(self, show: bool = True) -> Path:
        """`hpo report`: write <study>/report.html and return its path; in a notebook (with
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
        return f"Study({str(self.folder)!r})"

    def _repr_html_(self) -> str:
        return _summary(self)


def _summary(study: Study) -> str:
    """The HTML summary of a study: name and state, trials by status, best value and config,
    where its files are."""
    from hpo import fmt  # pandas: only once a study is shown

    e = html.escape
    meta = study.meta
    board = study.leaderboard if (study.folder / "leaderboard.csv").is_file() else None
    holder = StudyLock(study.folder).holder()
    state = (f"running ({holder})" if holder else
             "finished" if meta.get("finished") else "stopped (the same search continues it)")
    rows = [("study", f"<b>{e(study.name)}</b> · {e(state)}")]
    if board is not None and len(board):
        counts = Counter(board["status"])
        rows.append(("trials", e(f"{len(board)} of {meta.get('trials', '?')}: " + ", ".join(
            f"{counts[status]} {status}" for status in sorted(counts, key=lambda s: (
                -counts[s], s))))))
        metric = board.columns[4]  # rank, trial_id, point, status, then the metric
        top = board.iloc[0]
        if top["status"] in ("completed", "stopped") and top[metric] == top[metric]:
            point = f", starting point {top['point']}" if isinstance(top["point"], str) else ""
            rows.append((f"best {e(metric)}", e(f"{fmt.metric(top[metric])} (trial "
                                                  f"{top['trial_id']}{point})")))
    best = study.best_config
    if best:
        try:  # the values the search chose; the rest is fixed or default (best.json has all)
            searched = [k for k, d in load_study_space(study.folder).dimensions.items()
                        if hasattr(d, "describe") and k in best]
        except ValueError:
            searched = list(best)
        rows.append(("best config", "<code>" + e(", ".join(
            f"{k}={fmt.column(k, [best[k]])[0]}" for k in searched or best)) + "</code>"))
    files = [f for f in ("leaderboard.csv", "epochs.csv", "best.json", "best.pt",
                         "report.html", "final", "ray.log") if (study.folder / f).exists()]
    rows.append(("files", e(f"{study.folder}/: " + ", ".join(files))))
    body = "".join(f'<tr><th style="text-align:left;vertical-align:top">{k}</th>'
                   f'<td style="text-align:left">{v}</td></tr>' for k, v in rows)
    return f"<table>{body}</table>"


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
