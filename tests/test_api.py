"""hpo.search / hpo.load / Study, the Python API for notebooks: options checked as the
command line checks them, a study opened without its lock, and examples/quickstart.ipynb
executed in a real Jupyter kernel on tiny data."""

import os
from pathlib import Path

import pandas as pd
import pytest

import hpo
from conftest import TINY, begun, modules_loaded
from hpo.errors import HpoError
from hpo.lock import StudyLock

ROOT = Path(__file__).parents[1]


def test_importing_hpo_imports_neither_torch_nor_ray_nor_pandas():
    loaded = modules_loaded("import hpo; hpo.search, hpo.load, hpo.Study")
    assert not loaded & {"torch", "ray", "pandas"}


@pytest.mark.parametrize("options, message", [
    (dict(trials=0), "trials must be 1 or more, got 0"),
    (dict(trials=2.5), "trials must be a whole number, got 2.5"),
    (dict(fraction=1.5), "fraction must be in (0, 1], got 1.5"),
    (dict(gpus_per_trial=0), "gpus_per_trial must be in (0, 64], got 0"),
    (dict(checkpoint_every=-5), "checkpoint_every must be 0 or more, got -5"),
    (dict(max_epochs=1, grace_period=5), "--grace-period must be in 1..1 (the max epochs of a "
                                         "trial), got 5"),
    (dict(data="nowhere"), "nowhere: does not exist (--data)"),
    (dict(log=["neptune"]), "log must be one of mlflow, wandb, got 'neptune'"),
])
def test_search_refuses_bad_options_as_the_command_line_does(options, message, tmp_path,
                                                             tiny_parquet):
    options = {"data": str(tiny_parquet), "results": tmp_path, **options}
    with pytest.raises(HpoError) as caught:
        hpo.search(TINY, **options)
    assert str(caught.value).endswith(message)
    assert not list(tmp_path.iterdir())  # nothing written


def test_search_names_an_unknown_keyword():
    with pytest.raises(TypeError, match="no option 'trails'"):
        hpo.search(TINY, trails=3)


def test_load_opens_a_study_a_live_driver_holds(tmp_path, tiny_parquet):
    plan, _ = begun(tmp_path, tiny_parquet)
    with StudyLock(plan.folder.path):  # a running search holds it
        study = hpo.load(plan.folder.path)
        assert study.name == "tiny" and study.best_config is None
        assert list(study.trials.columns[:2]) == ["trial_id", "epoch"] and study.trials.empty
        assert f"running (host {os.uname().nodename}, PID {os.getpid()}" in study._repr_html_()
    with pytest.raises(ValueError, match="nowhere: no such study folder"):
        hpo.load(tmp_path / "nowhere")


def test_a_study_reads_its_folder(finished_study):
    study = hpo.load(finished_study.folder)
    board = study.leaderboard
    assert isinstance(board, pd.DataFrame) and len(board) == 6
    curves = study.trials
    assert set(curves.columns) >= {"trial_id", "epoch", "val_acc"}
    assert len(curves) == board.epochs_trained.sum()
    assert study.best_config["lr"] == board.loc[0, "lr"]
    page = study._repr_html_()
    counts = board.status.value_counts()
    for text in ("tiny", "finished", f"6 of 6: {counts.iloc[0]} {counts.index[0]}",
                 f"best val_acc</th><td style=\"text-align:left\">{board.loc[0, 'val_acc']:.4f}",
                 "lr=", "leaderboard.csv", "ray.log"):
        assert text in page, text
    # a plain Python session's print says as much, in text
    shown = repr(study).splitlines()
    assert shown[0].split() == ["study", "tiny", "·", "finished"]
    assert shown[1].startswith("trials") and "6 of 6:" in shown[1]
    assert shown[2].startswith("best val_acc") and f"(trial {board.loc[0, 'trial_id']}" \
        in shown[2]


@pytest.mark.notebook
def test_the_quickstart_notebook_runs(tmp_path, tiny_parquet, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    results = tmp_path / "results"
    for name, value in dict(HPO_SPACE=TINY, HPO_DATA=tiny_parquet, HPO_RESULTS=results,
                            HPO_TRIALS=3, HPO_MAX_EPOCHS=2, HPO_FRACTION=1, HPO_SEEDS=1).items():
        monkeypatch.setenv(name, str(value))
    # ipykernel leaves fds 1 and 2 alone under pytest; a real Jupyter shows what they get
    monkeypatch.delenv("PYTEST_CURRENT_TEST")
    notebook = nbformat.read(ROOT / "examples/quickstart.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = {i: cell.outputs for i, cell in enumerate(notebook.cells)
               if cell.cell_type == "code"}
    shown = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                      for cell in outputs.values() for o in cell)
    for line in ("Started a local Ray", "Configuration for experiment", "TensorBoard",
                 "ipywidgets", "IProgress", "Traceback", "WARNING"):
        assert line not in shown, line
    search = next(cell for cell in outputs.values()
                  if any("hpo tiny  3/3 finished" in o.get("data", {}).get("text/plain", "")
                         for o in cell))
    views = [o for o in search if o.output_type == "display_data"
             and "epoch" in o["data"]["text/plain"]]
    # one live view per phase (the search, then the selection's reruns), each updated in place
    # and its last frame kept
    phases = ["(select)" in v["data"]["text/plain"] for v in views]
    assert phases in ([False], [False, True]), [v["data"]["text/plain"][:200] for v in views]
    assert "3/3 finished" in views[0]["data"]["text/html"]
    assert "<table>" in search[-1]["data"]["text/html"]  # the Study's summary
    kinds = {k for cell in outputs.values() for o in cell for k in o.get("data", {})}
    assert "image/png" in kinds  # the curves
    folder = results / "tiny"
    assert "Started a local Ray instance" in (folder / "ray.log").read_text()
    assert (folder / "report.html").is_file() and (folder / "final/results.json").is_file()
