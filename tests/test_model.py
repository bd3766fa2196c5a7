"""Models build from configs, match the reports' parameter counts, and refuse what cannot fit."""

from pathlib import Path

import pytest
import torch

from hpo.config import SCHEMA, complete, schema_key
from hpo.model import Infeasible, build_model, count_parameters
from hpo.space import Choice, IntRange, load_space

ROOT = Path(__file__).parents[1]
SPACE = load_space(ROOT / "spaces/cifar10.py")


@pytest.mark.parametrize("name, classes, expected", [
    ("basenet", 10, 23_432), ("basenet", 25, 24_197),
    ("report000-final", 10, 273_108), ("report000-final", 25, 273_873),
    ("report002-best", 10, 15_438_986),
])
def test_starting_points_have_the_reports_parameter_counts(name, classes, expected):
    model = build_model(SPACE.point(name), (3, 32, 32), classes)
    assert count_parameters(model) == expected


def _values(name, dim):
    if isinstance(dim, Choice):
        # every value hpo supports, not only those the space keeps: a user may add them back
        allowed = SCHEMA[schema_key(name)].choices
        return list(dim.values) + [v for v in allowed or () if v not in dim.values]
    if isinstance(dim, IntRange):
        return list(range(dim.low, dim.high + 1, dim.step))
    return [dim.low, dim.high]


ARCH = [(n, v) for n, d in SPACE.searched().items() for v in _values(n, d)
        if not n.startswith(("aug_", "lr", "momentum", "weight_decay"))]


@pytest.mark.parametrize("name, value", ARCH, ids=[f"{n}={v}" for n, v in ARCH])
def test_every_value_of_every_dimension_trains_one_step(name, value):
    # a small base that every single change keeps feasible at 32x32
    base = dict(stages=3, convs_1=1, convs_2=1, convs_3=1, width=8, growth=1.5,
                dense_layers=3, dense_1=16, dense_2=16,
                dense_3=16, batch_size=4, padding="same")
    if name.startswith(("dense_", "width")):
        base[name] = min(value, 32) if isinstance(value, int) else value
    else:
        base[name] = value
    config = complete(base)
    model = build_model(config, (3, 32, 32), 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 40, 40), (1, 64, 48)])
def test_grayscale_and_other_sizes_build(shape):
    for name in ("basenet", "report000-final"):
        out = build_model(SPACE.point(name), shape, 7)(torch.rand(2, *shape))
        assert out.shape == (2, 7)


def test_residual_with_valid_padding_crops_the_skip():
    config = complete(dict(stages=2, convs_1=2, residual=True, padding="valid", width=8))
    assert build_model(config, (3, 32, 32), 10)(torch.rand(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("base, size, message", [
    (dict(stages=5, convs_1=3, convs_2=3, convs_3=3, kernel=5, padding="valid"), 32, "valid conv"),
    (dict(stages=5, pool_last=True, width=4, growth=1.0), 8, "cannot pool"),
])
def test_configs_too_deep_for_the_input_are_infeasible(base, size, message):
    with pytest.raises(Infeasible, match=message):
        build_model(complete(base), (3, size, size), 10)


def test_every_schema_key_has_a_valid_default():
    for name, key in SCHEMA.items():
        key.check(name, key.default)
