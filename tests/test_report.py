"""The study report: one offline HTML page with embedded PNGs, from a study whose record is
written trial by trial as the searcher writes it (no Ray), its views rebuilt from it."""

import base64
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import begun, write_trial
from hpo import views
from hpo.errors import Infeasible
from hpo.files import write_json
from hpo.folder import StudyFolder
from hpo.record import DATA, RUNS, Record
from hpo.report import pareto_front, write_report
from hpo.status import Status

TINY = Path(__file__).parent / "spaces" / "tiny.py"
CHROMIUM = Path("/usr/bin/chromium")
PNG = b"\x89PNG\r\n\x1a\n"
STARTED = 1_700_000_000.0


def make_study(root: Path, data: Path, name: str = "toy", n: int = 12) -> Path:
    """A finished study of the tiny space, written into its record as the searcher writes it:
    trial 0 is its starting point, every third trial is stopped by ASHA after epoch 1, the
    last is infeasible; seven draws were rejected and one repeated a trial; the views rebuilt.
    """
    plan, record = begun(root / "results", data, name=name)
    space = plan.space
    space.enqueue(record.study, space.point("too-slow"))
    clock = STARTED + 5
    for i in range(n):
        trial = record.ask()
        config = space.sample(trial)
        record.start(trial.number, config)
        if i == n - 1 and i > 0:
            record.epoch(trial.number, {"epoch": 0, "status": "infeasible"}, "val_acc")
            record.end(trial.number, Status.INFEASIBLE, "too <deep> & wide", "val_acc", "max")
            continue
        rate = max(0.0, 1 - abs(math.log10(config["lr"]) + 2) / 2)  # lr near 1e-2 learns best
        epochs = 1 if i % 3 == 2 else 4
        for e in range(1, epochs + 1):
            v = round(min(1.0, 0.1 + 0.2 * e * rate + 0.01 * i), 4)
            record.epoch(trial.number, {
                "epoch": e, "epochs": 4, "val_acc": v, "val_loss": 2 - v, "train_loss": 2 - v,
                "img_per_s": 1000.0, "t_start": clock, "t_end": clock + 1, "node": "n1",
                "data": "fp", "decoded": 0, "params": 1000 * (i % 5 + 1)}, "val_acc")
            clock += 1
        record.end(trial.number, Status.COMPLETED if epochs == 4 else Status.STOPPED, "",
                   "val_acc", "max")
    for _ in range(7):
        record.reject(record.ask().number, Infeasible("too wide", ("width",)))
    if n > 1:
        record.duplicate(record.ask().number, 1)
    record.set_meta(DATA, "/data/<toy>")
    record.set_meta(RUNS, [{
        "started": pd.Timestamp(STARTED, unit="s", tz="UTC").isoformat(),
        "ended": pd.Timestamp(clock, unit="s", tz="UTC").isoformat(),
        "wall_s": clock - STARTED, "busy_fraction": 0.8, "fingerprint": "abc123",
        "time": {"data_s": 3.0, "search_s": 50.0, "ray_start_s": 2.0, "idle_s": 10.0,
                 "train_s": 70.0, "eval_s": 5.0, "trial_other_s": 4.0}}])
    views.rebuild(plan.folder, record)
    return plan.folder.path


@pytest.fixture(scope="module")
def report(tmp_path_factory, tiny_parquet):
    study = make_study(tmp_path_factory.mktemp("report"), tiny_parquet)
    path = write_report(study)
    return path, path.read_text()


def images(html: str) -> list[str]:
    return re.findall(r'<img [^>]*src="([^"]*)"', html)


def test_every_plot_is_an_embedded_png(report):
    path, html = report
    assert path.name == "report.html"
    srcs = images(html)
    # learning curves, best so far, metric against params, importances, slices
    assert len(srcs) == 5 == html.count("<img")
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1], validate=True).startswith(PNG)
    assert "http://" not in html and "https://" not in html  # nothing to fetch: opens offline


def test_sections_header_and_escaping(report):
    _, html = report
    for heading in ("Learning curves", "Best so far against wall time",
                    "val_acc against trainable parameters", "Hyperparameter importance",
                    "Slices of the most important dimensions", "Leaderboard (top 15)",
                    "Final test results"):
        assert f"<h2>{heading}</h2>" in html
    assert "7 rejected before they became trials" in html and "1 repeats" in html
    assert "12: 8 completed, 3 stopped, 1 infeasible" in html
    assert "fingerprint abc123" in html and "/data/&lt;toy&gt;" in html
    assert "no trial computing 10 s of 50 s" in html and "training 70, evaluation 5" in html
    assert "too &lt;deep&gt; &amp; wide" in html and "<deep>" not in html
    assert "no final retrain yet (run hpo train" in html
    assert "On the Pareto front" in html
    # conditional dimensions are named, the starting point is left out, stopped trials counted
    assert re.search(r"Not assessed \(absent from some trials\): [^<]*convs_2", html)
    assert "(starting points left out: 1)" in html and "3 stopped by ASHA count too" in html


def test_top_table_shows_varying_hyperparameters_only(report):
    _, html = report
    table = html.split("<h2>Leaderboard (top 15)</h2>")[1].split("</table>")[0]
    header = re.findall(r"<th[^>]*>([^<]*)</th>", table)
    assert header[:5] == ["rank", "trial_id", "point", "status", "val_acc"]
    assert "lr" in header and "optimizer" in header
    assert "batch_size" not in header and "epochs" not in header  # constants
    assert table.count("<tr>") == 13  # the header and 12 trials


def test_best_named_next_step_failures_and_numbers(report):
    path, html = report
    study = path.parent
    best = pd.read_csv(study / "leaderboard.csv").iloc[0]
    named = f"sampled config, trial {best.trial_id}"
    assert f"<dd>{named} · val_acc {best.val_acc:.4f}</dd>" in html
    assert f"<code>hpo train {study} --seeds 3</code> to retrain the best, {named}," in html
    # the reasons are in a section of their own, not a column of the top table
    failed = html.split("<h2>Trials that failed</h2>")[1].split("<h2>")[0]
    assert "infeasible" in failed and "too &lt;deep&gt; &amp; wide" in failed
    top = html.split("<h2>Leaderboard (top 15)</h2>")[1].split("</table>")[0]
    assert ">reason<" not in top
    # one precision per column: every val_acc to 4 decimals, parameters with separators
    cells = re.findall(r"<tr>((?:<td[^>]*>[^<]*</td>)+)</tr>", top)
    values = [re.findall(r"<td[^>]*>([^<]*)</td>", row)[4] for row in cells]
    assert all(re.fullmatch(r"\d\.\d{4}", v) for v in values[:-1]) and values[-1] == ""
    assert "<td>5,000</td>" in top


def test_a_starting_point_that_wins_is_named_so(tmp_path, tiny_parquet):
    plan, record = begun(tmp_path / "results", tiny_parquet, name="won")
    study = plan.folder.path
    configs = {"a1": {"point": "basenet", "lr": 0.01, "epochs": 4, "seed": 0},
               "a2": {"lr": 0.3, "epochs": 4, "seed": 0}, "a3": {"lr": 9.0, "epochs": 4}}
    for tid, config in configs.items():
        if tid == "a3":
            write_trial(record, config, [{"epoch": 1, "status": "diverged"}], status="diverged",
                        reason="training loss became nan in epoch 1")
        else:
            write_trial(record, config, [{"epoch": 1, "val_acc": 0.9 if tid == "a1" else 0.5}])
    views.rebuild(plan.folder, record)
    html = write_report(study).read_text()
    assert "<dd>starting point basenet (trial 0) · val_acc 0.9000</dd>" in html
    assert "tuned" not in html
    failed = html.split("<h2>Trials that failed</h2>")[1].split("<h2>")[0]
    assert ">2<" in failed and "training loss became nan in epoch 1" in failed
    (study / "final").mkdir()
    write_json(study / "final" / "results.json", {
        "config": {**configs["a1"], "epochs": 30}, "seeds": [0], "test_acc": [0.8],
        "mean": 0.8, "std": 0.0})
    html = write_report(study).read_text()
    assert "starting point basenet (the search&#x27;s best)" in html
    assert "The final retrain of the best is below" in html and "best-seed0.pt" in html
    write_json(study / "final" / "results.json", {
        "config": {**configs["a2"], "seed": 2}, "seeds": [2], "test_acc": [0.7],
        "mean": 0.7, "std": 0.0})
    assert "sampled config, trial 1</td>" in write_report(study).read_text()


def test_pareto_front_on_a_hand_made_frame():
    df = pd.DataFrame({"trial_id": list("abcdefg"),
                       "params": [100, 200, 200, 300, 400, 50, 500],
                       "val_acc": [0.5, 0.6, 0.7, 0.7, 0.9, None, 0.8]})
    front = pareto_front(df, "val_acc", "max")
    assert list(front["trial_id"]) == ["a", "c", "e"]  # b: c as small and better; d: tie
    df["val_loss"] = [1.0, 0.8, 0.9, 0.8, 0.5, None, 0.6]
    front = pareto_front(df, "val_loss", "min", size_col="params")
    assert list(front["trial_id"]) == ["a", "b", "e"]
    assert pareto_front(df.iloc[:0], "val_acc", "max").empty


def test_bare_folder_becomes_sentences_and_final_results_render(tmp_path, tiny_parquet):
    plan, _ = begun(tmp_path / "results", tiny_parquet, name="bare")  # as a search starts
    study = plan.folder.path
    plan.folder.record.unlink()  # a copy of the folder without its record
    (study / "final").mkdir()
    (study / "final" / "results.json").write_text(json.dumps({
        "config": {"lr": 0.01}, "seeds": [0, 1, 2], "test_acc": [0.9, 0.91, 0.92],
        "mean": 0.91, "std": 0.01,
        "starting_points": {"<basenet>": {"test_acc": [0.8, 0.82, math.nan], "mean": 0.81,
                                          "std": 0.01}},
        "ensemble": {"of": "configs", "k": 2, "test_acc": 0.9345, "members": [
            {"trial_id": 4, "test_acc": 0.9123}, {"trial_id": 1, "test_acc": 0.8765}]}}))
    html = write_report(study).read_text()
    assert "<img" not in html
    assert "no epochs reported yet" in html and "no study.db" in html
    assert "no trials yet" in html and "none yet" in html
    final = html.split("<h2>Final test results</h2>")[1]
    # a config no trial of the folder matches: named for what it is, not "tuned"
    assert "<td class=\"text\">sampled config</td>" in final and "tuned" not in final
    assert "0.9100" in final and "0.9000, 0.9100, 0.9200" in final
    assert "starting point &lt;basenet&gt;" in final and "0.8100" in final
    assert "0.8200, failed" in final
    assert "ensemble of 2 configs (trial 4, 1)" in final and "0.9345" in final
    assert "members: 0.9123, 0.8765" in final


@pytest.fixture(scope="module")
def small(tmp_path_factory, tiny_parquet):
    """Four trials: two completed, one stopped, one infeasible."""
    return make_study(tmp_path_factory.mktemp("small"), tiny_parquet, n=4)


def test_too_few_trials_for_importances_says_why(small):
    html = write_report(small).read_text()
    section = html.split("<h2>Hyperparameter importance</h2>")[1].split("<h2>")[0]
    assert "<img" not in section and "no importances yet: 2 finished trials" in section
    # the slices fall back to the first searched dimensions
    assert 'alt="val_acc against each of stages, convs_1, ' in html


def test_report_imports_no_ray(small):
    code = ("import sys; from hpo.report import write_report; write_report(sys.argv[1]); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'ray'))")
    out = subprocess.run([sys.executable, "-c", code, str(small)], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_images_load_in_headless_chromium(report, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium)")
    path, html = report
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
           "--virtual-time-budget=5000", "--dump-dom", path.resolve().as_uri()]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    body = re.search(r"<body[^>]*>", run.stdout)
    assert body, f"chromium dumped no DOM: {run.stderr[-2000:]}"
    assert 'data-images-loaded="true"' in body.group(0)
    assert f'data-images="{html.count("<img")}"' in body.group(0)
    # every plot is drawn as wide as the page's text, none at 60% of it
    assert 'data-narrowest-image="100"' in body.group(0)


def test_the_selection_is_told_with_its_means(report, tmp_path, tiny_parquet):
    _, html = report
    assert "not run yet: the top configs train again" in html.split(
        "<h2>Choosing the best</h2>")[1].split("<h2>")[0]
    study = make_study(tmp_path, tiny_parquet)
    record = Record.load(f"sqlite:///{study / 'study.db'}", "toy")
    first, second = record.top("val_acc", "max", {Status.COMPLETED}, 2)
    # the second's seeds do better than the first's: the mean chooses it
    record.rerun(first.number, 1, first.best("val_acc", "max")[0] - 0.3, Status.COMPLETED)
    record.rerun(second.number, 1, second.best("val_acc", "max")[0], Status.COMPLETED)
    views.rebuild(StudyFolder(study), record)
    html = write_report(study).read_text()
    section = html.split("<h2>Choosing the best</h2>")[1].split("<h2>")[0]
    assert f"the best mean, trial {second.number} (" in section
    assert f"one run's value would have chosen trial {first.number}" in section
    assert section.count("<tr>") == 3
    assert re.search(rf"trial {second.number} · val_acc [0-9.]+, mean [0-9.]+ over 2 seeds",
                     html)
    assert pd.read_csv(study / "leaderboard.csv").trial_id[0] == second.number
