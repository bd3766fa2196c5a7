"""The final model: retrain one config on train + validation with several seeds, test each once.

A search chooses on validation; only this step reads the test split, once per seed, so the
figure it prints is an honest estimate. Results go to <study>/final/.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from hpo.data import Dataset
from hpo.files import write_json
from hpo.study import versions
from hpo.train import evaluate, run_trial, to_device


def retrain(config: Mapping[str, Any], data: Dataset, seeds: Sequence[int], out: Path,
            name: str = "best", console: Console | None = None) -> dict[str, Any]:
    """Train `config` for its full epochs on train + validation once per seed, test each model
    on the test split, save weights and results under `out`, and return the summary:
    {"name", "config", "seeds", "test_acc": [...], "mean", "std", "runs": [...]}.

    The summary is also merged into out/results.json: the best config's at the top level,
    a starting point's under "starting_points"[name].
    """
    if data.x_test is None or len(data.x_test) == 0:
        raise ValueError("the data has no test split to evaluate the final model on")
    console = console or Console()
    out.mkdir(parents=True, exist_ok=True)
    full = data.train_and_val()
    runs = []
    bar = Progress(TextColumn("{task.description}"), BarColumn(),
                   TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console)
    with bar:
        for seed in seeds:
            task = bar.add_task(f"{name} seed {seed}", total=config["epochs"], info="")
            runs.append(_one_seed({**config, "seed": seed}, data, full, out, name, bar, task))
    accs = [r["test_acc"] for r in runs]
    summary = {"name": name, "config": dict(config), "seeds": list(seeds), "test_acc": accs,
               "mean": statistics.fmean(accs) if accs else None,
               "std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "runs": runs,
               "data_fingerprint": data.fingerprint, "train_fingerprint": full.fingerprint,
               "versions": versions()}
    _merge(out / "results.json", name, summary)
    console.print(f"{name}: test accuracy {summary['mean']:.4f} ± {summary['std']:.4f} "
                  f"over {len(accs)} seed(s) → {out}")
    return summary


def _one_seed(config, data: Dataset, full: Dataset, out: Path, name: str, bar, task) -> dict:
    last: dict[str, Any] = {}

    def report(metrics, model=None, state=None):
        last.update(metrics=metrics, model=model)
        bar.update(task, completed=metrics["epoch"],
                   info=f"train loss {metrics['train_loss']:.3f}")

    t0 = time.time()
    final = run_trial(config, full, report)
    if final["status"] != "completed" or last.get("model") is None:
        return {"seed": config["seed"], "status": final["status"],
                "reason": final.get("reason", ""), "test_acc": float("nan")}
    model = last["model"]
    dev = to_device(full, next(model.parameters()).device)
    x_test = torch.as_tensor(data.x_test).to(dev.x_train.device)
    y_test = torch.as_tensor(data.y_test).long().to(dev.x_train.device)
    test_loss, test_acc = evaluate(model, x_test, y_test, dev, config)
    weights = out / f"{name}-seed{config['seed']}.pt"
    torch.save(model.state_dict(), weights)
    return {"seed": config["seed"], "status": "completed", "test_acc": test_acc,
            "test_loss": test_loss, "train_loss": final["train_loss"],
            "seconds": round(time.time() - t0, 1), "weights": weights.name}


def _merge(path: Path, name: str, summary: dict) -> None:
    results = json.loads(path.read_text()) if path.is_file() else {}
    if name == "best":
        results.update(summary)
    else:
        results.setdefault("starting_points", {})[name] = summary
    write_json(path, results)
