"""A study's leaderboard as terminal tables that fit the width, or as plain CSV.

`hpo leaderboard` prints it; numbers are formatted by hpo.fmt, as the live view and the report
format them.
"""

from __future__ import annotations

import csv
import difflib
import sys
from pathlib import Path

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from hpo import fmt
from hpo.errors import ConfigError
from hpo.leaderboard import KEY, Rows, metric_of
from hpo.status import FAILURES


def print_leaderboard(board: Rows, study: str | Path, top: int | None = None,
                      columns: str | None = None, every: bool = False, as_csv: bool = False,
                      console: Console | None = None,
                      importances: dict[str, float] | None = None) -> None:
    """Print the leaderboard `board` (read_rows of `study`) to fit `console`: the key
    columns, then the hyperparameters that vary, as many as fit, those that mattered most in
    the study first (`importances`, study.json's), then those that vary most among the rows
    shown; `every` of them, or the `columns` named ("a,b,c"), in further tables; the reasons of
    failed rows under it. With `as_csv`, the file's rows unformatted instead. Raises
    ConfigError naming a column that the leaderboard does not have."""
    console = console or Console()
    chosen = [c.strip() for c in (columns or "").split(",") if c.strip()]
    if unknown := [c for c in chosen if c not in board.columns]:
        near = difflib.get_close_matches(unknown[0], board.columns, n=3)
        raise ConfigError(f"--columns: {study} has no column {unknown[0]!r}" + (
            f" (did you mean {' or '.join(near)}?)" if near else
            " (see the header of its leaderboard.csv)"))
    if as_csv:
        _print_csv(Path(study), top, chosen)
        return
    shown = board.head(top or TOP)
    key = [c for c in _key_columns(board.columns)  # no starting point: no column for it
           if c != "point" or any(v is not None for v in shown.column(c))]
    first = board.columns.index("node") + 1
    varying = order_varying(shown, board.columns[first:], importances or {})
    rest = [c for c in chosen if c not in key] if chosen else varying
    pages, left_out = _pages(shown, key, rest, console, every=every or bool(chosen))
    console.print(f"[bold]{study}[/]: {len(board)} trials" + (
        f", the top {len(shown)} shown (--top N for more)" if len(shown) < len(board) else ""),
        highlight=False)
    for page in pages:
        console.print(_table(shown, page))
    if left_out:
        console.print(_one_line(f"{len(left_out)} more vary: ", left_out,
                                " (--all shows them, --columns a,b picks)", console.width),
                      highlight=False, soft_wrap=True)
    failed = [r for r in shown.rows if r["status"] in FAILURES and r["reason"] is not None]
    for row in failed if "reason" not in chosen else ():
        console.print(f"trial {row['trial_id']} {row['status']}: {row['reason']}",
                      markup=False, highlight=False)
    # they have no value, so they rank last: say they exist even when the top leaves them out
    if hidden := sum(r["status"] in FAILURES for r in board.rows) - len(failed):
        console.print(f"{hidden} trials below these failed, were infeasible, diverged or ran "
                      f"out of memory (--top {len(board)} shows them with their reasons)",
                      highlight=False)


def order_varying(shown: Rows, columns, importances: dict[str, float]) -> list[str]:
    """The hyperparameter columns that differ between the rows `shown` (not the dozens that
    are constant): those the study's importances rank, most important first, then the rest,
    most distinct values first, those most rows have (not a starting point's own keys) ahead
    of sparse ones."""
    columns = list(columns)
    values = {c: shown.column(c) for c in columns}
    varying = [c for c in columns if len(set(values[c])) > 1]  # a blank is a value here
    return sorted(varying, key=lambda c: (-importances.get(c, -1.0), values[c].count(None),
                                          -len(set(values[c]) - {None}), columns.index(c)))


def _one_line(head: str, names: list[str], tail: str, width: int) -> str:
    """`head` + as many of `names` as fit in `width` with `tail` (the rest counted)."""
    shown = list(names)

    def line():
        rest = len(names) - len(shown)
        return head + ", ".join(shown) + (f" and {rest} more" if rest else "") + tail

    while shown and len(line()) > width:
        shown.pop()
    return line()


TOP = 10
HEADERS = {"rank": "#", "trial_id": "trial", "best_epoch": "best ep",
           "epochs_trained": "epochs", "wall_s": "wall s", "img_per_s": "img/s"}


def _key_columns(columns) -> list[str]:
    """The columns every view of a leaderboard starts with."""
    metric = metric_of(columns)
    return [c for c in (*KEY, metric, "pareto", f"{metric}_mean", f"{metric}_sd", "runs",
                        "best_epoch", "params", "wall_s") if c in columns]


def _pages(shown: Rows, key: list[str], rest: list[str], console: Console,
           every: bool) -> tuple[list[list[str]], list[str]]:
    """The columns of each table to print, each table as wide as the console at most: the key
    columns and the first of `rest` that fit, then (`every`) further tables of rank, trial and
    the rest; and the columns of `rest` left out."""
    pages, page, rest = [], list(key), list(rest)
    while True:
        for c in list(rest):
            size = _measure(shown, page + [c], console)
            if (size.minimum if _wraps(shown.column(c)) else size.maximum) <= console.width:
                page.append(c)
                rest.remove(c)
        if len(page) == 2 and rest:  # one too wide for any table: alone, folded
            page.append(rest.pop(0))
        pages.append(page)
        if not every or not rest:
            return pages, rest
        page = ["rank", "trial_id"]


def _table(shown: Rows, columns: list[str]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0),
                  header_style="bold")
    cells = []
    for c in columns:
        values = shown.column(c)
        cells.append(fmt.column(c, values))
        numeric = fmt.kind_of(c, values) in ("int", "float")
        # values are never cut short: a sentence wraps onto more lines, a value never does
        table.add_column(HEADERS.get(c, c), justify="right" if numeric else "left",
                         no_wrap=not _wraps(values), overflow="fold")
    for row in zip(*cells):
        table.add_row(*row)
    return table


def _wraps(values: list) -> bool:
    """Whether a column holds sentences (a reason), which may wrap onto more lines."""
    return any(isinstance(v, str) and " " in v for v in values)


def _measure(shown: Rows, columns: list[str], console: Console) -> Measurement:
    unbounded = console.options.update_width(1_000_000)  # its natural width, not the console's
    return Measurement.get(console, unbounded, _table(shown, columns))


def _print_csv(study: Path, top: int | None, chosen: list[str]) -> None:
    """The leaderboard's rows as the file has them (no formatting), all of them or the
    `top`, every column or the key ones and `chosen`."""
    path = study / "leaderboard.csv" if study.is_dir() else study
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1: 1 + top if top else None]
    keep = list(range(len(header)))
    if chosen:
        key = _key_columns(header)
        keep = [header.index(c) for c in key + [c for c in chosen if c not in key]]
    out = csv.writer(sys.stdout, lineterminator="\n")
    for row in [header, *body]:
        # a hand-edited row may be short: its missing cells are blanks, as pandas reads them
        out.writerow([row[i] if i < len(row) else "" for i in keep])
