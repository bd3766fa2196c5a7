"""A study's report: one static HTML page, plots embedded as PNG, that opens offline.

Read from the study folder alone (leaderboard.csv, epochs.csv, study.json, space.py, study.db,
final/results.json), so it works on a copied folder, while the search runs or after it.
"""

from __future__ import annotations

import base64
import io
import json
import math
from contextlib import nullcontext
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # not pyplot: the Agg canvas, no global backend state

from hpo import fmt
from hpo.files import write_atomic
from hpo.leaderboard import FIXED, KEY, metric_of, read_leaderboard, rows_of
from hpo.meter import Meter
from hpo.registry import METRICS, sign
from hpo.status import FAILURES, Status
from hpo.table import order_varying

TOP = 15
BEST, DONE, FADED = "#d62728", "#1f77b4", "#9a9a9a"
CSS = """body{font:14px/1.45 system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em}
h2{border-bottom:1px solid #ddd;margin-top:1.8em}table{border-collapse:collapse;font-size:12px}
td,th{padding:2px 8px;border-bottom:1px solid #eee;text-align:right;white-space:nowrap}
th{background:#f4f4f4}img{width:100%;height:auto}.missing{color:#777;font-style:italic}
td.text,th.text{text-align:left}.next{background:#f4f8fc;padding:.5em .8em;border-radius:4px}
code{white-space:nowrap}td.wrap{white-space:normal;text-align:left;min-width:24em}
.wide{overflow-x:auto}dt{font-weight:600;float:left;width:9em;clear:left}dd{margin-left:9em}"""
# --dump-dom shows the DOM, not whether images decoded nor how wide they are drawn: the page
# records that itself on load (the narrowest plot, in % of the page's text width)
SCRIPT = """window.addEventListener("load", () => { const i = [...document.images];
document.body.dataset.imagesLoaded = i.every(x => x.complete && x.naturalWidth > 0);
document.body.dataset.images = i.length;
const page = document.querySelector("h1").getBoundingClientRect().width;
document.body.dataset.narrowestImage = Math.round(Math.min(...i.map(
  x => x.getBoundingClientRect().width)) / page * 100); });"""


class _Missing(Exception):
    """A section that cannot be drawn; the message is the sentence shown instead."""


def write_report(study: str | Path, console=None) -> Path:
    """Write `<study>/report.html` and return its path; with a rich `console`, say how far
    it got, section by section (a bar on a terminal, lines in a log).

    One self-contained page: plots are inline PNGs as wide as the page, nothing is fetched,
    and one small script records on load whether every image decoded and how wide the
    narrowest is drawn (`data-images-loaded`, `data-images`, `data-narrowest-image` in % of
    the text's width, on body).
    Whatever a section needs and the folder lacks (no epochs yet, no study.db, too few trials
    for importances, no final retrain) becomes a sentence saying so; only a folder without a
    leaderboard.csv raises (FileNotFoundError). Never imports Ray.
    """
    from hpo.space import SpaceError
    from hpo.study import load_study_space, read_meta

    study = Path(study)
    board = read_leaderboard(study)
    meta = read_meta(study)
    try:
        # the budget the search ran under: its rungs are drawn from it
        space = load_study_space(study)
    except SpaceError:
        space = None
    metric = space.metric if space else metric_of(board.columns)
    mode = space.mode if space else METRICS[metric].mode
    epochs = pd.read_csv(study / "epochs.csv") if (study / "epochs.csv").is_file() else None
    ctx = dict(study=study, board=board, meta=meta, space=space, metric=metric, mode=mode,
               epochs=epochs)
    # importances first: the slices, and the leaderboard's columns, are chosen by them
    drawn = [("Hyperparameter importance", _importance_section),
             ("What to do next", _next), ("Learning curves", _curves),
             ("Best so far against wall time", _best_so_far),
             (f"{metric} against trainable parameters", _pareto),
             ("Slices of the most important dimensions", _slices),
             (f"Leaderboard (top {TOP})", _top_table), ("Choosing the best", _selection),
             ("Trials that failed", _failures),
             ("Final test results", _final)]
    html = {}
    # a line per section in a log: a report of many trials takes a while on one core
    with Meter(console, every_s=0) if console is not None else nullcontext() as meter:
        task = meter.task(f"report {study.name}", len(drawn), "sections") if meter else None
        for n, (title, draw) in enumerate(drawn, 1):
            html[title] = _guard(draw, ctx)
            if meter:
                meter.update(task, n, title)
    order = [t for t, _ in drawn[1:5]] + [drawn[0][0]] + [t for t, _ in drawn[5:]]
    body = _guard(_header, ctx) + "".join(f"<h2>{escape(t)}</h2>\n{html[t]}\n" for t in order)
    page = (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>hpo report: {escape(study.name)}</title><style>{CSS}</style></head>\n"
            f"<body>\n{body}<script>{SCRIPT}</script>\n</body></html>\n")
    write_atomic(study / "report.html", page)  # a browser never sees half a page
    return study / "report.html"


def pareto_front(df: pd.DataFrame, metric: str, mode: str,
                 size_col: str = "params") -> pd.DataFrame:
    """The rows no other row beats (a better `metric` with no larger `size_col`), smallest
    first; rows missing either value are ignored, and of equal rows only the first is kept."""
    rows = df.dropna(subset=[metric, size_col])
    rows = rows[np.isfinite(rows[metric].astype(float))]
    rows = rows.sort_values([size_col, metric], ascending=[True, sign(mode) < 0], kind="stable")
    keep, best = [], None
    for index, value in rows[metric].items():
        if best is None or sign(mode) * value > sign(mode) * best:
            keep.append(index)
            best = value
    return rows.loc[keep]


def _guard(draw, ctx) -> Any:
    try:
        return draw(ctx)
    except Exception as exc:  # the report is read after the fact: never lose the whole page
        why = str(exc) if isinstance(exc, _Missing) else f"could not draw this: {exc!r}"
        return f'<p class="missing">{escape(why)}</p>'


def _img(fig: Figure, alt: str) -> str:
    for ax in fig.axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # beside the plot: it never covers a curve
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0, fontsize=8)
    buf = io.BytesIO()
    # as wide as the page (1,150 px) or wider, so a plot is shrunk to fit, never blown up
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def _table(df: pd.DataFrame) -> str:
    """An HTML table, each column's numbers at one precision (as `hpo leaderboard` has them),
    text left-aligned, a reason wrapped."""
    cells = {c: fmt.column(str(c), df[c].tolist()) for c in df.columns}
    align = {c: ' class="wrap"' if c == "reason" else "" if fmt.kind_of(
        str(c), df[c].tolist()) in ("int", "float") else ' class="text"' for c in df.columns}
    head = "".join(f"<th{align[c]}>{escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td{align[c]}>{escape(cells[c][i])}</td>"
                                    for c in df.columns) + "</tr>" for i in range(len(df)))
    return f'<div class="wide"><table><tr>{head}</tr>{body}</table></div>'


def _best(ctx) -> dict[str, Any] | None:
    """The leaderboard's best row, if any trial has a value yet."""
    board, metric = ctx["board"], ctx["metric"]
    if board.empty or pd.isna(board.iloc[0][metric]):
        return None
    return board.iloc[0].to_dict()


def _named(row: dict[str, Any]) -> str:
    """A trial named for what it is: a starting point, or a config the searcher sampled."""
    point = row.get("point")
    if isinstance(point, str) and point:
        return f"starting point {point} (trial {row['trial_id']})"
    return f"sampled config, trial {row['trial_id']}"


def _header(ctx) -> str:
    board, meta, metric = ctx["board"], ctx["meta"], ctx["metric"]
    counts = board["status"].value_counts()
    words = [s.value for s in Status]
    order = [s for s in words if s in counts] + [s for s in counts.index if s not in words]
    best = _best(ctx)
    busy = meta.get("busy_fraction")
    wall = meta.get("wall_s")
    items = {
        "space file": f"{meta.get('space', '?')} (copy: space.py)",
        "data": f"{meta.get('data', '?')} · fingerprint {meta.get('fingerprint', '?')}",
        "started": meta.get("started", "?"),
        "wall time": f"{fmt.value(round(wall))} s" + (f" ({fmt.duration(wall)})" if wall >= 60
                                                      else "") if wall else "not finished",
        "trials": f"{len(board)}: " + ", ".join(f"{counts[s]} {s}" for s in order),
        "draws not run": (f"{meta.get('rejected', 0)} rejected before they became trials "
                          "(could not be built, or would not fit the device); "
                          f"{meta.get('duplicates', 0)} repeats of configs already run"),
        "busy": f"{busy:.0%} of the wall time computing" if busy is not None else "?",
        "time went to": _time_spent(meta.get("time")),
        "best trial": (f"{_named(best)} · {metric} {fmt.metric(best[metric])}"
                       + (f", mean {fmt.metric(best[metric + '_mean'])} over "
                          f"{int(best['runs'])} seeds" if pd.notna(best.get("runs")) else "")
                       if best else "none yet"),
    }
    rows = "".join(f"<dt>{escape(k)}</dt><dd>{escape(str(v))}</dd>" for k, v in items.items())
    return f"<h1>{escape(ctx['study'].name)}</h1>\n<dl>{rows}</dl>\n"


def _next(ctx) -> str:
    """One line: the command that takes the winner on to its honest test figure."""
    best, study = _best(ctx), ctx["study"]
    if best is None:
        raise _Missing("nothing to do yet: no trial has a value")
    final = study / "final" / "results.json"
    res = json.loads(final.read_text()) if final.is_file() else {}
    if "test_acc" in res:  # the best was retrained (not only starting points)
        weights = f"final/best-seed{(res.get('seeds') or [0])[0]}.pt"
        return (f'<p class="next">The final retrain of the best is below. '
                f"<code>hpo export {escape(str(study))} --rank 1 -o best.json</code> writes "
                f"its config; <code>{weights}</code> holds its weights.</p>")
    return (f'<p class="next">Run <code>hpo train {escape(str(study))} --seeds 3</code> to '
            f"retrain the best, {escape(_named(best))}, on train + validation and test it once "
            f"per seed (add <code>--point NAME</code> for a starting point beside it).</p>")


def _time_spent(spent: dict | None) -> str:
    if not spent:
        return "?"
    s = {k: fmt.value(round(v)) for k, v in spent.items()}
    return (f"data {s['data_s']} s and starting Ray {s['ray_start_s']} s; "
            f"no trial computing {s['idle_s']} s of {s['search_s']} s; "
            f"in trial-seconds: training {s['train_s']}, evaluation "
            f"{s['eval_s']}, start-up and reporting {s['trial_other_s']} "
            "(last run of the search)")


def _need_epochs(ctx) -> pd.DataFrame:
    e = ctx["epochs"]
    if e is None or ctx["metric"] not in e or e[ctx["metric"]].notna().sum() == 0:
        raise _Missing("no epochs reported yet (epochs.csv is empty or missing)")
    return e.dropna(subset=[ctx["metric"]]).assign(trial_id=lambda d: d["trial_id"].astype(str))


def _rungs(ctx) -> tuple[list[float], str]:
    space, board = ctx["space"], ctx["board"]
    # ASHA's milestones as hpo.tuning sets them up; the one at max_epochs itself is left out,
    # as every trial ends there anyway
    if space:
        return (space.rungs(),
                f"ASHA rungs (grace {space.grace_period}, factor {space.reduction_factor:g})")
    stopped = board.loc[board["status"] == Status.STOPPED, "epochs_trained"].dropna()
    return sorted(set(stopped)), "where stopped trials ended"


def _curves(ctx) -> str:
    e, board, metric = _need_epochs(ctx), ctx["board"], ctx["metric"]
    status = dict(zip(board["trial_id"].astype(str), board["status"]))
    fig = Figure(figsize=(11, 4.2))
    ax = fig.subplots()
    rungs, label = _rungs(ctx)
    for i, r in enumerate(rungs):
        ax.axvline(r, color="#bbb", ls="--", lw=1, label=None if i else label)
    for tid, g in e.sort_values("epoch", kind="stable").groupby("trial_id", sort=False):
        done = status.get(tid) == Status.COMPLETED
        ax.plot(g["epoch"], g[metric], marker=".", lw=1.2, color=DONE if done else FADED,
                alpha=0.8 if done else 0.35)
    best = _best(ctx)
    g = e[e["trial_id"] == str(best["trial_id"])].sort_values("epoch") if best else e.iloc[:0]
    if len(g):
        ax.plot(g["epoch"], g[metric], marker="o", lw=2.5, color=BEST,
                label=f"best: {_named(best)}")
    ax.plot([], [], color=DONE, label=Status.COMPLETED.value)
    ax.plot([], [], color=FADED, label="stopped by ASHA, failed or running")
    ax.set(xlabel="epoch", ylabel=metric)
    ax.xaxis.get_major_locator().set_params(integer=True)
    return _img(fig, f"{metric} per epoch of every trial")


def _best_so_far(ctx) -> str:
    e, metric, meta = _need_epochs(ctx), ctx["metric"], ctx["meta"]
    e = e.dropna(subset=["t_end"]).sort_values("t_end")
    if e.empty:
        raise _Missing("no epoch has an end time (t_end) yet")
    try:
        t0 = datetime.fromisoformat(meta["started"]).timestamp()
    except (KeyError, TypeError, ValueError):
        t0 = float(e["t_start"].min())
    t, y = e["t_end"].to_numpy(float) - t0, e[metric].to_numpy(float)
    best = sign(ctx["mode"]) * np.maximum.accumulate(sign(ctx["mode"]) * y)
    end = max(float(meta.get("wall_s") or 0), t[-1])
    fig = Figure(figsize=(11, 3.5))
    ax = fig.subplots()
    ax.scatter(t, y, s=10, color=FADED, alpha=0.6, label="every epoch")
    ax.step(np.append(t, end), np.append(best, best[-1]), where="post", color=BEST, lw=2,
            label="best so far")
    ax.set(xlabel="seconds since the study started (Ray's start-up included)", ylabel=metric,
           xlim=(0, end * 1.02))
    return _img(fig, f"best {metric} so far against wall time")


def _pareto(ctx) -> str:
    board, metric = ctx["board"], ctx["metric"]
    rows = board.dropna(subset=[metric, "params"])
    rows = rows[rows["params"] > 0]
    if rows.empty:
        raise _Missing("no trial has both a value and a parameter count yet")
    front = pareto_front(rows, metric, ctx["mode"])
    fig = Figure(figsize=(11, 4))
    ax = fig.subplots()
    done = rows["status"] == Status.COMPLETED
    ax.scatter(rows.loc[done, "params"], rows.loc[done, metric], color=DONE,
               label=Status.COMPLETED.value)
    ax.scatter(rows.loc[~done, "params"], rows.loc[~done, metric], color=FADED, alpha=0.5,
               label="stopped or failed (its best epoch)")
    ax.step(front["params"], front[metric], where="post", color=BEST, lw=1.5, label="Pareto front")
    ax.scatter(front["params"], front[metric], s=70, facecolors="none", edgecolors=BEST)
    ax.set(xscale="log", xlabel="trainable parameters (log)", ylabel=metric)
    cols = ["rank", "trial_id", "point", "status", metric, "params"]
    return (_img(fig, f"{metric} against parameters") + "<p>On the Pareto front (no other trial "
            f"has a better {escape(metric)} with as few parameters):</p>" + _table(front[cols]))


def _importance_section(ctx) -> str:
    """The importances' section, keeping the importances for the sections drawn after it."""
    found = _guard(_importances, ctx)  # (importances, html), or the sentence why there are none
    ctx["importances"], html = found if isinstance(found, tuple) else (None, found)
    return html


def _importances(ctx) -> tuple[dict[str, float] | None, str]:
    from hpo.importance import importances
    from hpo.record import Record

    study, db = ctx["study"], ctx["study"] / "study.db"
    if not db.is_file():
        raise _Missing("no importances: the folder has no study.db (its record)")
    found = importances(Record.load(f"sqlite:///{db.resolve()}", study.name), ctx["metric"],
                        ctx["mode"])
    if not found.values:
        raise _Missing(found.note)
    return found.values, _bars(found.values) + f"<p>{escape(found.note)}</p>"


def _bars(imp: dict[str, float]) -> str:
    names = list(imp)[::-1]  # most important on top
    fig = Figure(figsize=(11, 0.35 * len(names) + 1))
    ax = fig.subplots()
    ax.barh(names, [imp[n] for n in names], color=DONE)
    ax.set(xlabel="importance (shares summing to 1)")
    return _img(fig, "hyperparameter importances")


def _slices(ctx) -> str:
    board, metric, space = ctx["board"], ctx["metric"], ctx["space"]
    searched = space.searched() if space else {}
    dims = ctx["importances"] or searched or _varying(ctx)
    dims = [d for d in dims if d in board and board[d].notna().any()]
    rows = board.dropna(subset=[metric])
    if not dims or rows.empty:
        raise _Missing("nothing to slice yet: no trial has a value, or no dimension is known")
    fig = Figure(figsize=(11, 3))
    axes = fig.subplots(1, len(dims[:4]), sharey=True, squeeze=False)[0]
    rng = np.random.default_rng(0)
    for ax, dim in zip(axes, dims[:4]):
        r, d = rows.dropna(subset=[dim]), searched.get(dim)
        values = r[dim]
        if hasattr(d, "values") or values.dtype.kind not in "if":  # categorical: jittered slots
            label = fmt.column_formatter(dim, [*getattr(d, "values", ()), *values])
            cats = [label(v) for v in getattr(d, "values", ())]
            cats += sorted({label(v) for v in values} - set(cats))
            x = np.array([cats.index(label(v)) for v in values]) + rng.uniform(-.12, .12, len(r))
            # a quarter of the page holds a few labels side by side, many only slanted
            ax.set_xticks(range(len(cats)), [_short(c) for c in cats],
                          rotation=0 if len(cats) <= 3 else 45,
                          ha="center" if len(cats) <= 3 else "right", fontsize=8)
        else:
            x = values.to_numpy(float)
            ax.set_xscale("log" if getattr(d, "log", False) else "linear")
            if hasattr(d, "step") and not d.log:  # an IntRange: whole-number ticks
                ax.xaxis.get_major_locator().set_params(integer=True)
        done = (r["status"] == Status.COMPLETED).to_numpy()
        ax.scatter(x[done], r[metric][done], s=18, color=DONE)
        ax.scatter(x[~done], r[metric][~done], s=18, color=FADED, alpha=0.5)
        ax.set_xlabel(dim)
    axes[0].set_ylabel(metric)
    return _img(fig, f"{metric} against each of {', '.join(dims[:4])}")


def _top_table(ctx) -> str:
    board = ctx["board"]
    if board.empty:
        raise _Missing("no trials yet")
    # led by who the trial is and how it did, then what mattered, then the rest of its row
    m = ctx["metric"]
    lead = [c for c in (*KEY, m, "pareto", f"{m}_mean", f"{m}_sd", "runs")
            if c in board and board[c].notna().any()]
    tail = [c for c in FIXED if c not in lead and c != "reason" and board[c].notna().any()]
    return _table(board.head(TOP)[lead + _varying(ctx) + tail])


def _selection(ctx) -> str:
    """The selection's configs, each with its one search run's value and its mean over seeds;
    and whether the mean chose another winner than one run would have."""
    board, m, meta = ctx["board"], ctx["metric"], ctx["meta"]
    if "runs" not in board or board["runs"].isna().all():
        chosen = (meta.get("selection") or {}).get("select")
        raise _Missing("not run: one run's value chose the best (--select 0)" if chosen == 0
                       else "not run yet: the top configs train again with other seeds once "
                       "the search has run all its trials")
    rerun = board[board["runs"].notna()]
    single = rerun.loc[(rerun[m] * sign(ctx["mode"])).idxmax()]
    best = rerun.iloc[0]
    said = ("one run's value would have chosen the same" if single.trial_id == best.trial_id
            else f"one run's value would have chosen trial {single.trial_id} "
            f"({fmt.metric(single[m])} in its search run)")
    line = (f"<p>The top {len(rerun)} configs trained again with other seeds; the best mean, "
            f"trial {best.trial_id} ({fmt.metric(best[f'{m}_mean'])} ± "
            f"{fmt.metric(best[f'{m}_sd'])} over {int(best.runs)} runs), is the study's best "
            f"(best.json); {escape(said, quote=False)}.</p>\n")
    return line + _table(rerun[["trial_id", "point", m, f"{m}_mean", f"{m}_sd", "runs"]])


def _failures(ctx) -> str:
    board = ctx["board"]
    failed = board[board["status"].isin(FAILURES)]
    if failed.empty:
        raise _Missing("none: every trial ran until it completed, ASHA stopped it, or it is "
                       "still running")
    return _table(failed[["rank", "trial_id", "point", "status", "epochs_trained", "reason"]])


def _varying(ctx) -> list[str]:
    """The hyperparameters that differ between trials (not the dozens of constant ones), the
    study's most important first (hpo leaderboard's order)."""
    board = ctx["board"]
    columns = [c for c in board.columns if c not in (*FIXED, ctx["metric"], "pareto")]
    return order_varying(rows_of(board), columns, ctx.get("importances") or {})


def _short(label: str, most: int = 14) -> str:
    """A tick label cut to `most` characters, so that slanted labels do not run into each
    other or off the figure."""
    return label if len(label) <= most else label[: most - 1] + "…"


def _final(ctx) -> str:
    path = ctx["study"] / "final" / "results.json"
    if not path.is_file():
        raise _Missing(f"no final retrain yet (run hpo train {ctx['study']})")
    res = json.loads(path.read_text())
    # hpo train writes the best config's results at the top level, each starting point's
    # under its name; a seed that failed to train has test_acc NaN
    runs = {**({_final_name(ctx, res.get("config") or {}): res} if "test_acc" in res else {}),
            **{f"starting point {name}": r
               for name, r in (res.get("starting_points") or {}).items()}}
    rows = [{"config": name, "test_acc mean": r.get("mean"), "test_acc std": r.get("std"),
             "per seed": _accuracies(r.get("test_acc", []))} for name, r in runs.items()]
    if ensemble := res.get("ensemble"):  # hpo train --ensemble: its average, tested once
        members = ensemble.get("members", [])
        trials = ", ".join(dict.fromkeys(str(m.get("trial_id")) for m in members))
        rows.append({"config": f"ensemble of {ensemble.get('k')} {ensemble.get('of')} (trial "
                               f"{trials})", "test_acc mean": ensemble.get("test_acc"),
                     "per seed": "members: " + _accuracies([m.get("test_acc")
                                                            for m in members])})
    seeds = ", ".join(map(str, res.get("seeds", [])))
    return (f"<p>Retrained and tested on the test split, seeds {escape(seeds)}:</p>"
            + _table(pd.DataFrame(rows)))


def _accuracies(values) -> str:
    """Test accuracies in a cell, a run that failed to train (NaN) said so."""
    return ", ".join(fmt.metric(v) if math.isfinite(v) else Status.FAILED.value
                     for v in map(float, values))


def _final_name(ctx, config: dict[str, Any]) -> str:
    """What the retrained best config is: a starting point, or the trial whose config it is
    (told apart by everything but the seed and epochs a retrain may change)."""
    if config.get("point"):
        return f"starting point {config['point']} (the search's best)"
    path = ctx["study"] / "configs.json"
    configs = json.loads(path.read_text()) if path.is_file() else {}
    same = [tid for tid, c in configs.items() if _settings(c) == _settings(config)]
    return f"sampled config, trial {same[0]}" if same else "sampled config"


def _settings(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in ("seed", "epochs")}
