"""Pretrained backbones: built, cut and frozen as configs say, weights read from a folder and
never downloaded, the learning-rate multiplier in the optimizer, sizes counted.

torchvision cannot download here, so the "pretrained" weights are randomly initialised state
dicts saved under the file names torchvision gives the real ones.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models import get_model

from hpo.backbone import Backbone
from hpo.config import SCHEMA, complete
from hpo.data import Dataset
from hpo.device import preprocess, to_device
from hpo.errors import Infeasible
from hpo.model import build_model, count_parameters
from hpo.packing import predict_bytes
from hpo.registry import BACKBONES
from hpo.space import load_space, random_configs
from hpo.train import make_optimizer, setup_training, train_step
from hpo.weights import (
    WEIGHTS_ENV,
    WeightsError,
    check_weights,
    hub_dir,
    pretrained_backbones,
    weights_filename,
    weights_url,
)

ROOT = Path(__file__).parents[1]
SPACE = load_space(ROOT / "spaces/transfer.py")


def save_weights(folder: Path, name: str) -> dict[str, torch.Tensor]:
    """A randomly initialised `name`'s state dict, saved as torchvision names the real file."""
    torch.manual_seed(1)
    state = get_model(name).state_dict()
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / weights_filename(name))
    return state


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A weights folder holding resnet18's file, and that state dict."""
    folder = tmp_path_factory.mktemp("weights")
    return folder, save_weights(folder, "resnet18")


@pytest.fixture
def weights_dir(weights, monkeypatch, tmp_path) -> Path:
    """The weights folder as --weights-dir sets it; torchvision's own cache empty."""
    monkeypatch.setenv(WEIGHTS_ENV, str(weights[0]))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return weights[0]


def resnet18(**kw) -> dict:
    return complete(dict(backbone="resnet18", input_size=32, batch_size=8, **kw))


def test_the_registry_covers_every_backbone_value_with_torchvisions_file_names():
    from torchvision.models import get_model_weights

    assert set(SCHEMA["backbone"].choices) == {"none", *BACKBONES}
    for name in BACKBONES:
        # hpo.weights keeps its own table, so a missing file is told without importing torch
        assert weights_url(name) == get_model_weights(name).DEFAULT.url
        assert weights_url(name).endswith("/" + weights_filename(name))
    assert weights_filename("resnet18") == "resnet18-f37072fd.pth"
    assert hub_dir() == Path(torch.hub.get_dir())


def test_pretrained_weights_are_loaded_from_the_folder(weights_dir, weights):
    state = weights[1]
    model = build_model(resnet18(cut=5), (3, 32, 32), 10)
    body = model[0]
    assert torch.equal(body.stages[0][0].weight, state["conv1.weight"])
    assert torch.equal(body.stages[4][1].conv2.weight, state["layer4.1.conv2.weight"])
    assert torch.equal(body.stages[0][1].running_var, state["bn1.running_var"])
    # not pretrained: torchvision's random start, not the file
    scratch = build_model(resnet18(cut=5, pretrained=False), (3, 32, 32), 10)
    assert not torch.equal(scratch[0].stages[0][0].weight, state["conv1.weight"])


def test_frozen_stages_do_not_change_while_the_rest_trains(weights_dir):
    config = resnet18(cut=4, frozen=2, optimizer="sgd", lr=0.1, momentum=0.9,
                      weight_decay=1e-3, dense_layers=1, dense_1=16)
    model, optimizer, criterion, _ = setup_training(
        build_model(config, (3, 32, 32), 10), config, torch.device("cpu"))
    body = model[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    # frozen BatchNorm stays in eval mode whatever the model is switched to
    assert not body.stages[0].training and not body.stages[1].training
    assert body.stages[2].training and body.stages[3].training
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    for _ in range(3):
        train_step(model, optimizer, criterion, x, y)
    after = model.state_dict()
    for key, value in before.items():
        same = torch.equal(value, after[key])
        if key.startswith(("0.stages.0.", "0.stages.1.")):
            assert same, key  # weights and BatchNorm statistics alike
        elif key.endswith((".weight", "running_mean")) and "num_batches" not in key:
            assert not same, key
    assert not any(p.requires_grad for s in body.stages[:2] for p in s.parameters())


def test_the_lr_multiplier_reaches_the_optimizers_groups(weights_dir):
    config = resnet18(cut=5, frozen=3, optimizer="adam", lr=0.02, backbone_lr=0.1,
                      dense_layers=1, dense_1=16)
    model = build_model(config, (3, 32, 32), 10)
    optimizer = make_optimizer(model, config)
    head, body = optimizer.param_groups
    assert head["lr"] == pytest.approx(0.02) and body["lr"] == pytest.approx(0.002)
    ids = lambda params: {id(p) for p in params}  # noqa: E731
    assert ids(head["params"]) == ids(model[1:].parameters())
    assert ids(body["params"]) == ids(p for s in model[0].stages[3:] for p in s.parameters())
    # all frozen: only the head is optimised (backbone_lr may be absent then)
    config = {k: v for k, v in resnet18(cut=3, frozen=5).items() if k != "backbone_lr"}
    groups = make_optimizer(build_model(config, (3, 32, 32), 10), config).param_groups
    assert len(groups) == 1 and groups[0]["lr"] == config["lr"]


@pytest.mark.parametrize("name", BACKBONES)
def test_every_backbone_builds_at_a_small_input_with_every_cut(name):
    # on the meta device: shapes only, no memory, no weights
    with torch.device("meta"):
        for cut in range(1, 6):
            head = ("gap", "flatten")[cut % 2]
            config = complete(dict(backbone=name, cut=cut, input_size=32, head=head))
            model = build_model(config, (3, 32, 32), 7)
            assert model(torch.empty(2, 3, 32, 32)).shape == (2, 7)


# the larger networks take several seconds to initialise at random on 2 CPU cores
SLOW = ("resnet50", "vgg16", "efficientnet_b0", "convnext_tiny")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.e2e) if n in SLOW else n
                                  for n in BACKBONES])
def test_every_backbone_trains_a_step_on_small_grayscale_images(name):
    # the whole network from a random start; grayscale images of 24 px go in as 3 channels
    # at 32 px
    config = complete(dict(backbone=name, pretrained=False, cut=5, frozen=2, input_size=32,
                           batch_size=4))
    model = build_model(config, (1, 24, 24), 7)
    dev = to_device(tiny_data(channels=1, size=24), torch.device("cpu"))
    x = preprocess(dev.x_train[:4], dev, config, torch.float32, train=True)
    assert x.shape == (4, 3, 32, 32)
    optimizer = make_optimizer(model, config)
    loss = train_step(model, optimizer, torch.nn.CrossEntropyLoss(), x, dev.y_train[:4])
    assert torch.isfinite(loss)


@pytest.mark.parametrize("name", ["vgg16", "convnext_tiny"])
def test_a_cut_too_deep_for_the_input_size_is_infeasible(name):
    # their unpadded 2x2 downsamplings leave nothing of 16 px after stage 5 (the padded
    # convolutions of the others never shrink below 1x1)
    config = complete(dict(backbone=name, cut=5, input_size=16))
    with pytest.raises(Infeasible, match=f"{name} cut after stage 5 cannot take 16x16"):
        build_model(config, (3, 32, 32), 7)
    with torch.device("meta"):
        build_model({**config, "cut": 4}, (3, 32, 32), 7)


def tiny_data(n=16, channels=3, size=32, classes=7) -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, channels, size, size), dtype=np.uint8)
    y = rng.integers(0, classes, n)
    return Dataset(x, y, x[:4], y[:4], None, None, tuple(map(str, range(classes))),
                   f"backbone-{n}-{channels}-{size}")


def test_pretrained_inputs_are_resized_and_take_imagenets_statistics():
    config = complete(dict(backbone="resnet18", input_size=48))
    dev = to_device(tiny_data(), torch.device("cpu"))
    grey = torch.full((2, 1, 32, 32), 51, dtype=torch.uint8)
    x = preprocess(grey, dev, config, torch.float32)
    assert x.shape == (2, 3, 48, 48)
    expected = (0.2 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(x[0, :, 10, 10], expected, atol=1e-5)
    # shrunk in bf16, as batches are made on a GPU
    small = preprocess(grey, dev, {**config, "input_size": 20}, torch.bfloat16)
    assert small.shape == (2, 3, 20, 20) and small.dtype == torch.bfloat16
    assert torch.allclose(small[0, :, 5, 5].float(), expected, atol=2e-2)


def test_packing_counts_frozen_weights_once_and_the_larger_inputs():
    def need(**kw):
        config = complete({"backbone": "resnet50", "input_size": 64, "batch_size": 32,
                           "optimizer": "adam", **kw})
        return predict_bytes(config, (3, 32, 32), 10)

    frozen, tuned = need(frozen=5), need(frozen=0)
    params = 23_508_032  # resnet50's convolutional part
    # fine-tuning adds gradients and two Adam slots of every weight, and the activations
    assert tuned - frozen >= 4 * 3 * params
    # the batch at 224 px: activations (kept by fine-tuning, passing through a frozen
    # network); evaluation batches shrink as inputs grow, so they do not
    assert need(frozen=0, input_size=224) > 4 * tuned
    assert (need(frozen=5, input_size=224, batch_size=512)
            > 4 * need(frozen=5, input_size=64, batch_size=512))


def test_the_transfer_space_needs_every_backbones_weights_and_its_configs_build():
    assert pretrained_backbones(space=SPACE) == set(BACKBONES)
    assert pretrained_backbones([{"backbone": "vgg16", "pretrained": False},
                                 {"backbone": "none"}, {"backbone": "resnet18"}]) == {"resnet18"}
    configs = [SPACE.point(n) for n in SPACE.starting_points] + random_configs(SPACE, 8)
    with torch.device("meta"):
        for config in configs:
            build_model(config, (3, 224, 224), 200)


def test_missing_weights_are_named_with_the_command_that_fetches_them(weights_dir, tmp_path):
    check_weights([resnet18()], str(weights_dir))  # present: no error
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsError) as info:
        check_weights([resnet18()], str(empty))
    message = str(info.value)
    assert "\n" not in message and "resnet18-f37072fd.pth" in message
    assert f"load_state_dict_from_url('{weights_url('resnet18')}', model_dir='{empty}'" in message


def hpo(*args, cwd, env):
    return subprocess.run([sys.executable, "-m", "hpo.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.e2e  # four commands, each importing torch and torchvision
def test_a_search_or_retrain_without_its_weights_stops_in_one_line(tmp_path, tiny_parquet):
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop(WEIGHTS_ENV, None)
    empty = tmp_path / "weights"
    empty.mkdir()
    config = tmp_path / "config.json"
    config.write_text('{"backbone": "resnet50", "epochs": 1}')
    cases = [
        (["search", ROOT / "spaces/transfer.py", "--data", tiny_parquet, "--weights-dir", empty],
         f"convnext_tiny: pretrained weights {weights_filename('convnext_tiny')} are not in "
         f"{empty} or {tmp_path / 'torch' / 'hub' / 'checkpoints'}; fetch them with: python -c"),
        (["search", ROOT / "spaces/transfer.py", "--data", tiny_parquet],
         f"model_dir='{tmp_path / 'torch' / 'hub' / 'checkpoints'}'"),
        (["train", config, "--data", tiny_parquet, "--weights-dir", empty],
         weights_filename("resnet50")),
        (["search", ROOT / "spaces/transfer.py", "--weights-dir", tmp_path / "nowhere"],
         "--weights-dir"),
    ]
    for args, message in cases:
        out = hpo(*args, cwd=tmp_path, env=env)
        assert out.returncode == 2, (args, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, out.stderr)
        assert not (tmp_path / "results").exists(), args


@pytest.mark.e2e  # imports torchvision in a new process
def test_show_prints_the_starting_points_total_and_trainable_parameters(tmp_path):
    out = subprocess.run([sys.executable, "-m", "hpo.cli", "show", ROOT / "spaces/transfer.py",
                          "--classes", "200"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    for text in ("report002-vgg16", "7,352,776", "7,612,936",
                 "report004-resnet50-features", "2,728,648", "26,236,680",
                 "report004-resnet50-finetune", "23,917,832", "trainable", "total"):
        assert text in out.stdout, text


def test_report002s_vgg16_has_the_reports_frozen_and_trainable_weights():
    # report 002: blocks 1-3 of VGG16 hold 1,735,488 weights, 260,160 of them in the frozen
    # blocks 1-2 (its printed totals, less the 1,180,160 of the conv it added after the cut)
    with torch.device("meta"):
        model = build_model(SPACE.point("report002-vgg16"), (3, 224, 224), 10)
    body = model[0]
    assert isinstance(body, Backbone)
    assert sum(p.numel() for p in body.parameters()) == 1_735_488
    assert sum(p.numel() for p in body.parameters()) - count_parameters(body) == 260_160
