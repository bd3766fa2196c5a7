"""`hpo train --ensemble K`: K models retrained, each tested once and the mean of their
probabilities once; configs (the top K completed configs) or seeds (the best config's seeds)
choose the members; the ensemble exports as one model that hpo predict runs.

The study is a record of four trials written without training (tests/conftest.py's
write_board); the members are trained for real, 2 epochs on the tiny data.
"""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from test_export import PROB_TOL, network_probabilities, run_onnx, run_program

import hpo
from conftest import TINY, write_board
from hpo.cli import main
from hpo.config import complete, read_config
from hpo.export import export_model, find_ensemble, load_classifier, load_ensemble
from hpo.final import train
from hpo.options import TrainOptions
from hpo.predict import Model
from hpo.study import load_study_data

BASE = dict(stages=1, convs_1=1, width=8, epochs=2, batch_size=64, optimizer="adam", lr=0.01)
# trial id -> (what its config changes, its validation accuracy per epoch)
TRIALS = [
    (dict(lr=0.003), [0.3, 0.5]),  # completed, rank 4
    (dict(aug_flip=True), [0.4, 0.8]),  # completed, rank 2
    (dict(width=16), [0.9]),  # stopped after 1 of its 2 epochs: rank 1, the study's best
    # completed, rank 3; its pixels are not normalised, unlike trial 1's
    (dict(normalize=False, optimizer="sgd", lr=0.05, momentum=0.9), [0.2, 0.6]),
]


def said(console_text: str) -> list[str]:
    return console_text.strip().splitlines()


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_parquet) -> Path:
    """results/ens with the ensemble of its top 2 configs retrained in final/."""
    folder = write_board(tmp_path_factory.mktemp("ensemble") / "results/ens", TINY,
                         tiny_parquet, [(complete({**BASE, **c}), v) for c, v in TRIALS])
    out = StringIO()
    train(TrainOptions(target=str(folder), ensemble=2), Console(file=out, width=200))
    (folder / "said.txt").write_text(out.getvalue())
    return folder


def recomputed(study: Path, members: list[dict], final: Path | None = None
               ) -> tuple[list[np.ndarray], np.ndarray]:
    """Each member's test probabilities from its weights saved in `final` (the study's
    final/), by hpo's trial path, and the test labels."""
    _, data = load_study_data(study)
    final = final or study / "final"
    return ([network_probabilities(data, m["config"], final / m["weights"], True)
             for m in members], data.y_test)


def test_configs_are_the_top_completed_ones_and_the_average_is_what_is_tested(study):
    ensemble = json.loads((study / "final/results.json").read_text())["ensemble"]
    configs = json.loads((study / "configs.json").read_text())
    members = ensemble["members"]
    # the leaderboard's top 2 completed trials (rank 1 stopped early), each with seed 0
    assert ensemble["of"] == "configs" and ensemble["k"] == 2 == ensemble["trained"]
    assert [m["trial_id"] for m in members] == [1, 3]
    assert [m["config"] for m in members] == [{**configs[t], "seed": 0} for t in ("1", "3")]
    assert [m["config"]["normalize"] for m in members] == [True, False]
    assert [m["weights"] for m in members] == ["ensemble-0.pt", "ensemble-1.pt"]
    probs, labels = recomputed(study, members)
    for m, p in zip(members, probs):
        assert m["test_acc"] == (p.argmax(1) == labels).mean()
    mean = np.mean(probs, axis=0)
    assert ensemble["test_acc"] == (mean.argmax(1) == labels).mean()
    assert ensemble["test_loss"] == pytest.approx(
        -np.log(mean[np.arange(len(labels)), labels]).mean(), rel=1e-5)
    # the members learned something, and disagree: otherwise averaging would prove little
    assert min(m["test_acc"] for m in members) > 0.2
    assert (probs[0].argmax(1) != probs[1].argmax(1)).any()
    accs = [m["test_acc"] for m in members]
    assert ensemble["members_mean"] == pytest.approx(np.mean(accs))
    assert ensemble["members_best"] == max(accs)
    lines = said((study / "said.txt").read_text())
    assert lines[0] == "member 1/2 (trial 1, seed 0): started (2 epochs)"
    assert lines[-1] == (f"ensemble of 2 configs: test accuracy {ensemble['test_acc']:.4f}, "
                         f"its members' mean {np.mean(accs):.4f}, best {max(accs):.4f} → "
                         f"{study / 'final'}")


def test_seeds_are_the_best_config_trained_again_and_sit_beside_a_plain_retrain(study,
                                                                                tmp_path):
    console = Console(file=StringIO(), width=200)
    # one epoch each (--epochs): what is tested here is which models, not how good
    train(TrainOptions(target=str(study), seeds=1, epochs=1, out=str(tmp_path)), console)
    results = hpo.load(study).train(ensemble=2, ensemble_of="seeds", epochs=1, out=tmp_path,
                                    console=console)
    ensemble, members = results["ensemble"], results["ensemble"]["members"]
    best = {**read_config(study / "best.json"), "epochs": 1}
    assert ensemble["of"] == "seeds" and ensemble["k"] == 2
    assert [m["trial_id"] for m in members] == [2, 2]
    assert [m["config"] for m in members] == [{**best, "seed": s} for s in (0, 1)]
    # the plain retrain is still there, and its seed 0 is the ensemble's first member
    assert results["seeds"] == [0] and results["config"] == best
    assert results["runs"][0]["test_acc"] == members[0]["test_acc"]
    plain = torch.load(tmp_path / "best-seed0.pt", weights_only=True)
    member = torch.load(tmp_path / "ensemble-0.pt", weights_only=True)
    assert all(torch.equal(plain[k], member[k]) for k in plain)
    probs, labels = recomputed(study, members, tmp_path)
    assert ensemble["test_acc"] == (np.mean(probs, axis=0).argmax(1) == labels).mean()


def test_the_ensemble_exports_as_one_model_that_averages_its_members(study, tmp_path):
    members, summary = find_ensemble(study)
    _, data = load_study_data(study)
    images = np.ascontiguousarray(data.x_test.transpose(0, 2, 3, 1))
    x = torch.from_numpy(images)
    with torch.no_grad():
        each = [load_classifier(study, w)[0](x).numpy() for w in members]
        together = load_ensemble(study, members)[0](x).numpy()
    expected = np.mean(each, axis=0)
    assert np.abs(together - expected).max() < PROB_TOL
    # and the members' classifiers are the networks hpo tested
    probs, _ = recomputed(study, summary["members"])
    assert np.abs(np.array(each) - np.array(probs)).max() < PROB_TOL

    onnx_file = export_model(study, tmp_path / "e.onnx", ensemble=True)
    assert np.abs(run_onnx(onnx_file, images) - expected).max() < PROB_TOL
    assert np.abs(Model(onnx_file, cpu=True).run(images) - expected).max() < PROB_TOL
    import onnx

    meta = {p.key: json.loads(p.value) for p in onnx.load(onnx_file).metadata_props
            if p.value[:1] in "[{"}
    listed = meta["ensemble"]["members"]
    assert meta["ensemble"]["of"] == "configs"
    assert meta["ensemble"]["test_acc"] == summary["test_acc"]
    assert [m["trial_id"] for m in listed] == [1, 3]
    assert [m["weights"] for m in listed] == ["final/ensemble-0.pt", "final/ensemble-1.pt"]
    assert [m["normalization"]["of"] for m in listed] == ["train+val", "none: pixels /255 only"]
    assert meta["classes"] == [f"class{k}" for k in range(10)]

    assert main(["export", str(study), "--final", "--ensemble", "--model",
                 str(tmp_path / "e.pt2")]) == 0
    assert np.abs(run_program(tmp_path / "e.pt2", images) - expected).max() < PROB_TOL
