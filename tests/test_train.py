"""The trial function, called directly: no Ray, a list as its report callback."""

import copy
import math
from pathlib import Path

import numpy as np
import pytest

from hpo.config import SCHEMA, complete, schema_key
from hpo.data import Dataset
from hpo.space import load_space, random_configs
from hpo.train import lr_factor, run_trial

KEYS = {"epoch", "epochs", "val_acc", "val_loss", "train_loss", "img_per_s", "params", "status"}


def dataset(n=32, channels=3, size=32, classes=10, seed=0, val_is_train=False):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, channels, size, size), dtype=np.uint8)
    y = rng.integers(0, classes, n)
    xv, yv = (x, y) if val_is_train else (x[: n // 4], y[: n // 4])
    return Dataset(x_train=x, y_train=y, x_val=xv, y_val=yv, x_test=None, y_test=None,
                   classes=tuple(map(str, range(classes))), fingerprint=f"test-{seed}-{n}")


def test_overfits_one_small_batch():
    # llm.c's check: a net that cannot memorise 32 images has a bug in its training step
    config = complete(dict(stages=2, width=16, optimizer="adam", lr=1e-2, batch_size=32,
                           epochs=60, normalize=True))
    rows = []
    run_trial(config, dataset(val_is_train=True), lambda m, *a, **k: rows.append(m))
    assert rows[-1]["train_loss"] < 0.1 * rows[0]["train_loss"]
    assert rows[-1]["val_acc"] == 1.0


def test_reports_every_epoch_with_the_expected_keys():
    config = complete(dict(stages=1, width=8, epochs=3, batch_size=8, aug_flip=True,
                           aug_crop=2, aug_cutout=4))
    rows = []
    final = run_trial(config, dataset(n=40), lambda m, *a, **k: rows.append(m))
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert all(KEYS <= set(r) for r in rows)
    assert [r["status"] for r in rows] == ["running", "running", "completed"]
    assert final == rows[-1] and rows[0]["params"] > 0


def test_grayscale_non_square_data_trains():
    config = complete(dict(stages=2, width=8, epochs=1, batch_size=8, aug_rotate=10.0,
                           aug_zoom=0.1, aug_shear=5.0))
    final = run_trial(config, dataset(n=24, channels=1, size=20, classes=3), lambda *a, **k: None)
    assert final["status"] == "completed"


def test_infeasible_config_reports_once_and_returns():
    config = complete(dict(stages=5, kernel=5, padding="valid", pool_last=True))
    rows = []
    final = run_trial(config, dataset(), lambda m, *a, **k: rows.append(m))
    assert final["status"] == "infeasible" and "valid conv" in final["reason"]
    assert len(rows) == 1 and rows[0]["epoch"] == 0


def test_non_finite_loss_ends_the_trial_as_diverged(monkeypatch):
    # NaN inputs from epoch 2 on make the loss NaN, as a blown-up net would
    calls = []

    def poisoned(x, config, generator=None):
        calls.append(1)
        return x * float("nan") if len(calls) > 4 else x

    monkeypatch.setattr("hpo.device.augment", poisoned)
    config = complete(dict(stages=1, width=8, epochs=5, batch_size=8))
    rows = []
    final = run_trial(config, dataset(n=32), lambda m, *a, **k: rows.append(m))
    assert final["status"] == "diverged" and final["epoch"] == 2
    assert [r["status"] for r in rows] == ["running", "diverged"]


@pytest.mark.parametrize("schedule", ["constant", "step", "cosine", "onecycle", "plateau"])
def test_schedules_start_warm_and_stay_bounded(schedule):
    config = complete(dict(schedule=schedule, epochs=10, warmup_epochs=1, step_every=3))
    factors = [lr_factor(config, s, 10) for s in range(100)]
    assert factors[0] == pytest.approx(0.1)  # warmup starts low
    assert all(0 <= f <= 1 and math.isfinite(f) for f in factors)


def test_imagefolder_space_trains_on_grayscale_images_of_another_size(tmp_path):
    # the adaptation a user makes lives in the space file: size and channels, nothing in hpo/
    from conftest import write_image_folder
    from hpo.data import load_dataset

    space = load_space(Path(__file__).parents[1] / "spaces/imagefolder.py")
    folder = write_image_folder(tmp_path / "imgs", n_per_class=12, size=(40, 30), channels=1,
                                num_classes=3)
    data = load_dataset(folder, image_size=space.image_size, channels=space.channels,
                        val_fraction=space.val_fraction, cache_dir=tmp_path / "cache")
    assert data.image_shape == (1, space.image_size, space.image_size)
    for config in random_configs(space, 4, seed=3):
        config.update(epochs=1, batch_size=8)
        assert run_trial(config, data, lambda *a, **k: None)["status"] == "completed"


OTHER = [(n, v) for n, d in load_space(Path(__file__).parents[1] / "spaces/cifar10.py")
         .searched().items()
         # a choice: every value hpo supports, also those the space leaves out
         for v in (list(dict.fromkeys([*d.values, *(SCHEMA[schema_key(n)].choices or ())]))
                   if hasattr(d, "values") else [d.low, d.high])
    if n.startswith(("aug_", "normalize", "optimizer", "lr", "momentum", "nesterov",
                     "weight_decay", "label_smoothing", "batch_size", "schedule",
                     "warmup_epochs", "step_every", "plateau_patience"))]


@pytest.mark.parametrize("name, value", OTHER, ids=[f"{n}={v}" for n, v in OTHER])
def test_every_training_and_augmentation_value_trains(name, value):
    # architecture values are covered in test_model; these go through the whole trial
    config = complete({"stages": 1, "width": 4, "epochs": 2, "batch_size": 8, name: value})
    if name == "batch_size":
        config["batch_size"] = min(value, 16)
    final = run_trial(config, dataset(n=24), lambda *a, **k: None)
    assert final["status"] == "completed" and math.isfinite(final["train_loss"])


def test_resume_continues_exactly_where_the_state_was_taken():
    # dropout (global RNG), augmentation and batches (the trial's generator), Adam's moments
    # and a plateau schedule: everything the next epochs depend on travels in the state
    config = complete(dict(stages=2, width=8, epochs=4, batch_size=8, optimizer="adam",
                           lr=3e-3, schedule="plateau", plateau_patience=0, dropout=0.3,
                           aug_flip=True, aug_crop=2, aug_cutout=4))
    data = dataset(n=40)
    rows, saved = [], {}

    def report(metrics, model=None, state=None):
        rows.append(metrics)
        if metrics["epoch"] == 2:
            saved.update(copy.deepcopy(state()),
                         model=copy.deepcopy(model.state_dict()))

    run_trial(config, data, report)
    resumed = []
    final = run_trial(config, data, lambda m, *a, **k: resumed.append(m), resume=saved)
    assert [r["epoch"] for r in resumed] == [3, 4] and final["status"] == "completed"
    for a, b in zip(rows[2:], resumed):
        assert (a["train_loss"], a["val_loss"], a["val_acc"]) == (
            b["train_loss"], b["val_loss"], b["val_acc"])
