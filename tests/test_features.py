"""A frozen backbone's features are computed once, kept in a file, and give the same head
training as running the backbone every epoch."""

import numpy as np
import pytest
import torch
from test_backbone import save_weights

from hpo import features
from hpo.config import complete
from hpo.data import Dataset
from hpo.train import run_trial
from hpo.weights import WEIGHTS_ENV, weights_filename


@pytest.fixture(scope="module")
def weights_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    save_weights(folder, "resnet18")
    return folder


@pytest.fixture
def cache(weights_folder, monkeypatch, tmp_path):
    """resnet18's weights from a folder, an empty feature cache, no features in memory."""
    monkeypatch.setenv(WEIGHTS_ENV, str(weights_folder))
    monkeypatch.setenv("HPO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(features, "_memory", {})
    return tmp_path / "cache"


def data(n_train=40, n_val=12, seed=0) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n_train + n_val, 3, 24, 24), dtype=np.uint8)
    y = rng.integers(0, 5, n_train + n_val)
    return Dataset(x[n_val:], y[n_val:], x[:n_val], y[:n_val], None, None,
                   tuple(map(str, range(5))), f"features-{n_train}-{n_val}-{seed}")


def frozen(**kw) -> dict:
    return complete({"backbone": "resnet18", "cut": 4, "frozen": 4, "input_size": 32,
                     "epochs": 3, "batch_size": 8, "dense_layers": 1, "dense_1": 16,
                     "dense_bn": True, "dropout_head": 0.3, "optimizer": "adam", "lr": 3e-3,
                     **kw})


def train(config, dataset):
    rows, last = [], {}

    def report(metrics, model=None, state=None):
        rows.append(metrics)
        last.update({k: v.clone() for k, v in model.state_dict().items()})

    run_trial(config, dataset, report, device="cpu")
    return rows, last


@pytest.mark.parametrize("head", ["gap", "flatten"])
def test_cached_features_train_the_head_as_the_backbone_would(cache, weights_folder,
                                                              monkeypatch, head):
    config, dataset = frozen(head=head), data()
    monkeypatch.setenv(features.ENV_SWITCH, "0")
    plain, plain_weights = train(config, dataset)
    monkeypatch.setenv(features.ENV_SWITCH, "1")
    cached, cached_weights = train(config, dataset)
    assert [r.get("features") for r in plain] == [None] * 3
    assert [r["features"] for r in cached] == ["computed"] * 3
    for a, b in zip(plain, cached):
        for key in ("train_loss", "val_loss", "val_acc"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    assert plain_weights.keys() == cached_weights.keys()
    for key, value in plain_weights.items():
        assert torch.allclose(value.float(), cached_weights[key].float(), atol=1e-5), key
    # the backbone never trained: its weights are still the file's
    state = torch.load(weights_folder / weights_filename("resnet18"), weights_only=True)
    assert torch.equal(cached_weights["0.stages.3.1.conv2.weight"],
                       state["layer3.1.conv2.weight"])
    assert len(list(cache.glob("features-*.pt"))) == 1
    assert not list(cache.glob(".*.tmp"))


def test_another_process_reads_the_file_instead_of_computing(cache):
    config, dataset = frozen(), data()
    first, _ = train(config, dataset)
    features._memory.clear()  # what a new trial process starts with
    second, _ = train(config, dataset)
    features._memory.clear()
    third, _ = train({**config, "seed": 1, "dropout_head": 0.1, "lr": 1e-3}, dataset)
    assert [first[0]["features"], second[0]["features"], third[0]["features"]] == [
        "computed", "cached", "cached"]
    assert [r["val_loss"] for r in first] == [r["val_loss"] for r in second]
    assert len(list(cache.glob("features-*.pt"))) == 1


def test_only_a_wholly_frozen_backbone_without_augmentation_uses_the_cache(cache,
                                                                          monkeypatch):
    assert features.applies(frozen())
    assert features.applies(frozen(cut=3, frozen=5))
    assert not features.applies(frozen(frozen=3))  # stage 4 trains
    assert not features.applies(frozen(aug_flip=True))
    assert not features.applies(frozen(aug_crop=2))
    assert not features.applies(complete({"stages": 2}))
    monkeypatch.setenv(features.ENV_SWITCH, "0")
    assert not features.applies(frozen())


def test_the_key_changes_with_whatever_the_features_depend_on(cache, weights_folder):
    def key(fingerprint="a", **kw):
        return features.cache_key(frozen(**kw), fingerprint, torch.float32, torch.device("cpu"))

    base = key()
    assert key(lr=0.1, dense_1=64, seed=3, dropout_head=0.0) == base  # the head's own
    others = [key(cut=3, frozen=3), key(input_size=48), key(head="flatten"), key("b"),
              key(pretrained=False), key(pretrained=False, seed=1)]
    assert len({base, *others}) == 1 + len(others)
    save_weights(weights_folder, "resnet18")  # a new file under the same name
    assert key() != base


def test_a_final_retrain_without_validation_images_trains_on_cached_features(cache):
    rows, _ = train(frozen(epochs=2), data(n_val=0))
    assert rows[-1]["status"] == "completed" and rows[-1]["features"] == "computed"
