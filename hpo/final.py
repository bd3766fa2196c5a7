"""The final model: retrain one config on train + validation with several seeds, test each once.

A search chooses on validation; only this step reads the test split, once per seed, so the
figure it prints is an honest estimate. Results go to `<study>/final/`. `train` is `hpo train`
and `Study.train` both: it checks what it is given before torch is imported.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from rich.console import Console

from hpo.config import read_config
from hpo.errors import ConfigError, StudyError
from hpo.files import read_json_object, write_json
from hpo.folder import StudyFolder
from hpo.meter import Meter
from hpo.options import TrainOptions, check
from hpo.preflight import check_data_path, check_output
from hpo.provenance import versions
from hpo.status import Status
from hpo.study import load_study_data, load_study_space
from hpo.weights import check_weights

if TYPE_CHECKING:
    from hpo.data import Dataset


def train(options: TrainOptions, console: Console | None = None) -> dict[str, Any]:
    """`hpo train`: retrain a study's best config (or each of its starting points named in
    `options.point`), or a config file's, on train + validation for its full epochs, once per
    seed 0..seeds-1, and test each model once. Writes `<study>/final/` (or `out`) and returns
    its results.json. Raises an HpoError (one line) before anything starts for a target,
    point, data path, weights file or output folder it cannot use."""
    options = check(options)
    target = Path(options.target)
    if options.out:
        check_output(options.out, "--out", folder=True)
    check_data_path(options.data)
    if target.is_dir():
        folder = StudyFolder(target)
        folder.check()
        space = load_study_space(target)
        unknown = [n for n in options.point if n not in space.starting_points]
        if unknown:
            raise ConfigError(f"{target}: no starting point {unknown[0]!r} in its space (it "
                              f"has: {', '.join(space.starting_points) or 'none'})")
        if not options.point and not folder.best_config.is_file():
            raise StudyError(f"{target}: no trial has finished yet, so there is no best "
                             "config to retrain (--point NAME retrains a starting point)")
        jobs = ([(n, space.point(n)) for n in options.point]
                or [("best", read_config(folder.best_config))])
        check_weights([c for _, c in jobs], options.weights_dir)
        _, data = load_study_data(target, options.data, options.fraction)
        out = Path(options.out or folder.final)
    elif target.is_file():
        config = read_config(target)
        if not options.data:
            raise ConfigError(f"{target}: pass --data for a config outside a study")
        check_weights([config], options.weights_dir)
        from hpo.data import load_dataset

        jobs = [("best", config)]
        data = load_dataset(options.data, fraction=options.fraction or 1.0)
        out = Path(options.out or Path("results") / f"final-{target.stem}")
    else:
        raise StudyError(f"{target}: no such config file or study folder")
    for name, config in jobs:
        if options.epochs:
            config = {**config, "epochs": options.epochs}
        retrain(config, data, range(options.seeds), out, name, console)
    return read_json_object(out / "results.json", "results file")


def retrain(config: Mapping[str, Any], data: Dataset, seeds: Sequence[int], out: Path,
            name: str = "best", console: Console | None = None) -> dict[str, Any]:
    """Train `config` for its full epochs on train + validation once per seed, test each model
    on the test split, save weights and results under `out`, and return the summary:
    {"name", "config", "seeds", "test_acc": [...], "mean", "std", "runs": [...]}.

    The summary is also merged into out/results.json: the best config's at the top level,
    a starting point's under "starting_points"[name].
    """
    if data.x_test is None or len(data.x_test) == 0:
        raise StudyError("the data has no test split to evaluate the final model on")
    console = console or Console(soft_wrap=True)
    out.mkdir(parents=True, exist_ok=True)
    full = data.train_and_val()
    runs = []
    with Meter(console) as meter:
        for seed in seeds:
            task = meter.task(f"{name} seed {seed}", config["epochs"], "epochs")
            runs.append(_one_seed({**config, "seed": seed}, data, full, out, name, meter, task))
            if runs[-1]["status"] == Status.COMPLETED:
                meter.note(f"{name} seed {seed}: test accuracy {runs[-1]['test_acc']:.4f}")
    accs = [r["test_acc"] for r in runs]
    summary = {"name": name, "config": dict(config), "seeds": list(seeds), "test_acc": accs,
               "mean": statistics.fmean(accs) if accs else None,
               "std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "runs": runs,
               "data_fingerprint": data.fingerprint, "train_fingerprint": full.fingerprint,
               "versions": versions()}
    _merge(out / "results.json", name, summary)
    spread = (f" ± {summary['std']:.4f} over {len(accs)} seeds" if len(accs) > 1
              else " (one seed: no spread to tell)")
    console.print(f"{name}: test accuracy {summary['mean']:.4f}{spread} → {out}")
    return summary


def _one_seed(config, data: Dataset, full: Dataset, out: Path, name: str, meter: Meter,
              task: int) -> dict:
    import torch

    from hpo.train import evaluate, run_trial, to_device

    last: dict[str, Any] = {}

    def report(metrics, model=None, state=None):
        last.update(metrics=metrics, model=model)
        meter.update(task, metrics["epoch"], f"train loss {metrics['train_loss']:.3f}")

    t0 = time.time()
    final = run_trial(config, full, report)
    if final["status"] != Status.COMPLETED or last.get("model") is None:
        return {"seed": config["seed"], "status": final["status"],
                "reason": final.get("reason", ""), "test_acc": float("nan")}
    model = last["model"]
    dev = to_device(full, next(model.parameters()).device)
    x_test = torch.as_tensor(data.x_test).to(dev.x_train.device)
    y_test = torch.as_tensor(data.y_test).long().to(dev.x_train.device)
    test_loss, test_acc = evaluate(model, x_test, y_test, dev, config)
    weights = out / f"{name}-seed{config['seed']}.pt"
    torch.save(model.state_dict(), weights)
    return {"seed": config["seed"], "status": Status.COMPLETED, "test_acc": test_acc,
            "test_loss": test_loss, "train_loss": final["train_loss"],
            "seconds": round(time.time() - t0, 1), "weights": weights.name}


def _merge(path: Path, name: str, summary: dict) -> None:
    results = json.loads(path.read_text()) if path.is_file() else {}
    if name == "best":
        results.update(summary)
    else:
        results.setdefault("starting_points", {})[name] = summary
    write_json(path, results)
