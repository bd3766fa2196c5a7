"""The final retrain (hpo train): each seed trained on train + validation and tested once,
its progress told where a log can show it, one seed's result shown without a spread."""

from io import StringIO

from rich.console import Console

from hpo.config import complete
from hpo.data import load_dataset
from hpo.final import retrain


def test_one_seed_is_tested_and_said_without_a_spread(tiny_parquet, tmp_path):
    config = complete(dict(stages=1, width=8, epochs=2, batch_size=64))
    out = StringIO()
    summary = retrain(config, load_dataset(tiny_parquet), [0], tmp_path / "final", "best",
                      Console(file=out, width=200))
    lines = out.getvalue().splitlines()
    assert lines[0] == "best seed 0: started (2 epochs)"
    assert any(line.startswith("best seed 0: 2/2 epochs, train loss ") for line in lines)
    assert lines[-2].startswith("best seed 0: test accuracy ")
    assert "(one seed: no spread to tell)" in lines[-1] and "±" not in lines[-1]
    assert summary["seeds"] == [0] and (tmp_path / "final/best-seed0.pt").is_file()
