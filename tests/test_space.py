"""Space files load without Ray, sample valid configs, and fail with one line on bad input."""

import subprocess
import sys
from pathlib import Path

import pytest

from hpo.config import check_config
from hpo.space import SpaceError, load_space, random_configs

ROOT = Path(__file__).parents[1]
SPACE_FILES = sorted((ROOT / "spaces").glob("*.py")) + sorted((ROOT / "tests/spaces").glob("*.py"))


@pytest.mark.parametrize("path", SPACE_FILES, ids=lambda p: p.name)
def test_every_space_file_loads_and_samples_valid_configs(path):
    space = load_space(path)
    for config in random_configs(space, 25, seed=1):
        check_config(config)
        # the budget of the space bounds every trial
        assert config["epochs"] <= space.max_epochs
        # per-stage keys exist exactly for the stages the config has (none with a backbone)
        stages = config.get("stages", 0)
        assert ("stages" in config) == (config.get("backbone", "none") == "none")
        assert all(f"convs_{s}" in config for s in range(1, stages + 1))
        assert f"convs_{stages + 1}" not in config
    for name in space.starting_points:
        check_config(space.point(name))


def test_conditional_dimensions_exist_only_where_they_apply():
    space = load_space(ROOT / "spaces/cifar10.py")
    configs = random_configs(space, 60, seed=2)
    for c in configs:
        assert ("momentum" in c) == (c["optimizer"] in ("sgd", "rmsprop"))
        assert ("nesterov" in c) == (c["optimizer"] == "sgd")
        assert all(f"dense_{i}" in c for i in range(1, c["dense_layers"] + 1))
    assert {c["optimizer"] for c in configs} > {"sgd", "adam"}


def test_loading_a_space_does_not_import_ray():
    code = ("import sys; from hpo.space import load_space; "
            f"load_space({str(ROOT / 'spaces/cifar10.py')!r}); "
            "assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_starting_points_are_named_complete_configs():
    space = load_space(ROOT / "spaces/cifar10.py")
    assert {"basenet", "report000-final", "report002-best"} <= set(space.starting_points)
    point = space.point("report002-best")
    assert point["point"] == "report002-best" and point["epochs"] == space.max_epochs
    assert point["optimizer"] == "adam" and point["width_4"] == 512


GOOD = """
from hpo.space import choice, uniform
metric, mode = "val_acc", "max"
trials = 2
max_epochs = 2
dimensions = {"lr": choice([0.1]), "dropout_1": uniform(0.0, 0.5)}
"""


@pytest.mark.parametrize("text, message", [
    (GOOD.replace("uniform(0.0, 0.5)", "uniform(0.0, 1.5)"), "dropout_1 must be in [0, 0.6]"),
    (GOOD.replace("choice([0.1])", "choice([-0.1])"), "lr must be in (0, 10]"),
    (GOOD + 'dimensions["optimizer"] = "adamz"\n', "optimizer must be one of"),
    (GOOD.replace("trials = 2", ""), "missing required name(s): trials"),
    (GOOD + "1 / 0\n", "could not import: ZeroDivisionError"),
    (GOOD + 'dimensions["lrr"] = 0.1\n', "unknown config key 'lrr'"),
    (GOOD + 'starting_points = {"x": {"lr": -1}}\n', "starting point 'x': lr must be"),
])
def test_bad_space_file_is_one_line_naming_the_file(tmp_path, text, message):
    path = tmp_path / "bad.py"
    path.write_text(text)
    with pytest.raises(SpaceError) as err:
        load_space(path)
    assert str(err.value).startswith(str(path)) and message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_space_file(tmp_path):
    with pytest.raises(SpaceError, match="no such space file"):
        load_space(tmp_path / "nope.py")


def test_a_starting_point_is_recorded_in_optuna_with_its_own_values():
    import optuna

    space = load_space(ROOT / "spaces/cifar10.py")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    params = space.point_params("report000-final")
    study.enqueue_trial(params, user_attrs={"hpo_point": "report000-final"})
    trial = study.ask()
    config = space.sample(trial)
    assert config == space.point("report000-final")
    # TPE sees the values the point trained with, not random draws
    assert trial.params == params and params["optimizer"] == "sgd" and params["bn"] == "before"
    # momentum exists for SGD, and 0.0 lies outside its range, so it is not claimed
    assert "momentum" not in params and "dense_1" in params


@pytest.mark.parametrize("size", [16, 28, 64])
def test_imagefolder_points_lie_inside_its_space_at_every_image_size(size, tmp_path):
    # the recipes are written in the space's own values and scaled to the image size: TPE
    # is told each of them whole (no value outside a range dropped), and sampling the
    # enqueued values gives the point back
    import optuna

    source = (ROOT / "spaces/imagefolder.py").read_text()
    path = tmp_path / "imagefolder.py"
    path.write_text(source.replace("image_size = 64", f"image_size = {size}", 1))
    space = load_space(path)
    assert space.image_size == size and len(space.starting_points) == 3
    for name in space.starting_points:
        point = space.point(name)
        applies = {k for k, d in space.searched().items() if d.when is None or d.when(point)}
        assert set(space.point_params(name)) == applies, name
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        space.enqueue(study, point)
        assert space.sample(study.ask()) == point
        assert point["stages"] <= min(5, size.bit_length() - 1) and point["aug_flip"] is False


def test_rungs_are_ashas_below_max_epochs():
    import dataclasses

    space = load_space(ROOT / "spaces/cifar10.py")  # grace 2, factor 3, 30 epochs
    assert space.rungs() == [2, 6, 18]
    assert load_space(ROOT / "tests/spaces/tiny.py").rungs() == [1, 2]  # grace 1, 2, 4 epochs
    assert dataclasses.replace(space, max_epochs=2).rungs() == []
