"""The final model: retrain one config on train + validation with several seeds, test each once;
or retrain an ensemble of K models and test their averaged prediction once.

A search chooses on validation; only this step reads the test split, once per model (and once
for an ensemble's average), so the figure it prints is an honest estimate. Results go to
`<study>/final/`. `train` is `hpo train` and `Study.train` both: it checks what it is given
before torch is imported.
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
from hpo.leaderboard import completed_configs
from hpo.meter import Meter
from hpo.options import TrainOptions, check
from hpo.preflight import check_data_path, check_output
from hpo.provenance import versions
from hpo.status import Status
from hpo.study import load_study_data, load_study_space, read_meta
from hpo.weights import check_weights

if TYPE_CHECKING:
    from hpo.data import Dataset


def train(options: TrainOptions, console: Console | None = None) -> dict[str, Any]:
    """`hpo train`: retrain a study's best config (or each of its starting points named in
    `options.point`), or a config file's, on train + validation for its full epochs, once per
    seed 0..seeds-1, and test each model once; with `options.ensemble`, retrain the ensemble's
    K members instead (`retrain_ensemble`). Writes `<study>/final/` (or `out`) and returns
    its results.json. Raises an HpoError (one line) before anything starts for a target,
    point, ensemble, data path, weights file or output folder it cannot use."""
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
        if options.ensemble and options.ensemble_of == "configs":
            jobs = top_configs(target, options.ensemble)
        elif not options.point and not folder.best_config.is_file():
            raise StudyError(f"{target}: no trial has finished yet, so there is no best "
                             "config to retrain (--point NAME retrains a starting point)")
        elif options.ensemble:  # the best config's seeds, named by its trial
            jobs = [((read_meta(target).get("best") or {}).get("trial_id"),
                     read_config(folder.best_config))]
        else:
            jobs = ([(n, space.point(n)) for n in options.point]
                    or [("best", read_config(folder.best_config))])
        check_weights([c for _, c in jobs], options.weights_dir)
        _, data = load_study_data(target, options.data, options.fraction)
        out = Path(options.out or folder.final)
    elif target.is_file():
        config = read_config(target)
        if not options.data:
            raise ConfigError(f"{target}: pass --data for a config outside a study")
        if options.ensemble and options.ensemble_of == "configs":
            raise ConfigError(f"{target}: --ensemble-of configs takes a study's top configs, "
                              "and a config file is one; pass --ensemble-of seeds")
        check_weights([config], options.weights_dir)
        from hpo.data import load_dataset

        jobs = [(None if options.ensemble else "best", config)]
        data = load_dataset(options.data, fraction=options.fraction or 1.0)
        out = Path(options.out or Path("results") / f"final-{target.stem}")
    else:
        raise StudyError(f"{target}: no such config file or study folder")
    if options.epochs:
        jobs = [(name, {**config, "epochs": options.epochs}) for name, config in jobs]
    if not options.ensemble:
        for name, config in jobs:
            retrain(config, data, range(options.seeds), out, name, console)
    elif options.ensemble_of == "seeds":
        (trial, config), = jobs
        retrain_ensemble([(trial, {**config, "seed": s}) for s in range(options.ensemble)],
                         "seeds", data, out, console)
    else:
        retrain_ensemble(jobs, "configs", data, out, console)
    return read_json_object(out / "results.json", "results file")


def top_configs(study: Path, k: int, seed: int = 0) -> list[tuple[int, dict[str, Any]]]:
    """(trial id, config with `seed`) of the study's top `k` completed trials, best first:
    the members of an --ensemble-of configs. StudyError when it has fewer."""
    completed = completed_configs(study)
    if len(completed) < k:
        fewer = f"--ensemble {len(completed)} or " if len(completed) >= 2 else ""
        raise StudyError(f"{study}: --ensemble {k} needs {k} completed configs and the study "
                         f"has {len(completed)}; pass {fewer}--ensemble-of seeds")
    return [(tid, {**config, "seed": seed}) for tid, config in completed[:k]]


def retrain(config: Mapping[str, Any], data: Dataset, seeds: Sequence[int], out: Path,
            name: str = "best", console: Console | None = None) -> dict[str, Any]:
    """Train `config` for its full epochs on train + validation once per seed, test each model
    on the test split, save weights and results under `out`, and return the summary:
    {"name", "config", "seeds", "test_acc": [...], "mean", "std", "runs": [...]}.

    The summary is also merged into out/results.json: the best config's at the top level,
    a starting point's under "starting_points"[name].
    """
    console, full = _begin(data, out, console)
    runs = []
    with Meter(console) as meter:
        for seed in seeds:
            task = meter.task(f"{name} seed {seed}", config["epochs"], "epochs")
            runs.append(_one_seed({**config, "seed": seed}, data, full,
                                  out / f"{name}-seed{seed}.pt", meter, task)[0])
            if runs[-1]["status"] == Status.COMPLETED:
                meter.note(f"{name} seed {seed}: test accuracy {runs[-1]['test_acc']:.4f}")
    accs = [r["test_acc"] for r in runs]
    summary = {"name": name, "config": dict(config), "seeds": list(seeds), "test_acc": accs,
               "mean": statistics.fmean(accs) if accs else None,
               "std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "runs": runs,
               **_provenance(data, full)}
    _merge(out / "results.json", summary, *([] if name == "best" else ["starting_points",
                                                                        name]))
    spread = (f" ± {summary['std']:.4f} over {len(accs)} seeds" if len(accs) > 1
              else " (one seed: no spread to tell)")
    console.print(f"{name}: test accuracy {summary['mean']:.4f}{spread} → {out}")
    return summary


def retrain_ensemble(members: Sequence[tuple[int | None, Mapping[str, Any]]], of: str,
                     data: Dataset, out: Path, console: Console | None = None
                     ) -> dict[str, Any]:
    """Train each member, (its trial id, its config with its seed), for its full epochs on
    train + validation; test each on the test split, then the mean of their probabilities
    once (each member preprocesses as its config says). Saves the weights as
    out/ensemble-<i>.pt and returns the summary, also merged into out/results.json as
    "ensemble": {"of", "k", "test_acc", "test_loss", "members": [{"trial_id", "seed",
    "config", "test_acc", "weights", ...}], "trained", "members_mean", "members_best", ...}.
    A member that fails to train is recorded as such and left out of the average ("trained"
    counts those in it)."""
    import torch

    from hpo.train import scores

    console, full = _begin(data, out, console)
    runs, probs = [], []
    with Meter(console) as meter:
        for i, (trial, config) in enumerate(members):
            of_trial = f"trial {trial}, " if trial is not None else ""
            name = f"member {i + 1}/{len(members)} ({of_trial}seed {config['seed']})"
            task = meter.task(name, config["epochs"], "epochs")
            run, p = _one_seed(config, data, full, out / f"ensemble-{i}.pt", meter, task)
            runs.append({"trial_id": trial, **run, "config": dict(config)})
            if p is not None:
                probs.append(p)
                meter.note(f"{name}: test accuracy {run['test_acc']:.4f}")
    nan = float("nan")
    loss, acc = (scores(torch.stack(probs).mean(0), torch.as_tensor(data.y_test).long())
                 if probs else (nan, nan))
    accs = [r["test_acc"] for r in runs if r["status"] == Status.COMPLETED]
    summary = {"of": of, "k": len(members), "test_acc": acc, "test_loss": loss,
               "members": runs, "trained": len(probs),
               "members_mean": statistics.fmean(accs) if accs else nan,
               "members_best": max(accs, default=nan), **_provenance(data, full)}
    _merge(out / "results.json", summary, "ensemble")
    failed = f" ({len(members) - len(probs)} failed to train)" if len(probs) < len(members) \
        else ""
    console.print(f"ensemble of {len(members)} {of}{failed}: test accuracy {acc:.4f}, its "
                  f"members' mean {summary['members_mean']:.4f}, best "
                  f"{summary['members_best']:.4f} → {out}")
    return summary


def _begin(data: Dataset, out: Path, console: Console | None) -> tuple[Console, Dataset]:
    """Before a retrain: the console to show it on and the data it trains on (train + val);
    StudyError for data without a test split."""
    if data.x_test is None or len(data.x_test) == 0:
        raise StudyError("the data has no test split to evaluate the final model on")
    out.mkdir(parents=True, exist_ok=True)
    return console or Console(soft_wrap=True), data.train_and_val()


def _provenance(data: Dataset, full: Dataset) -> dict[str, Any]:
    """What a retrain's summary records of its data and software."""
    return {"data_fingerprint": data.fingerprint, "train_fingerprint": full.fingerprint,
            "versions": versions()}


def _one_seed(config, data: Dataset, full: Dataset, weights: Path, meter: Meter,
              task: int) -> tuple[dict, Any]:
    """Train `config` on `full`, test it on `data`'s test split and save its weights as
    `weights`: (its run's record, its test probabilities on the CPU, or None when it did not
    complete)."""
    import torch

    from hpo.train import probabilities, run_trial, scores, to_device

    last: dict[str, Any] = {}

    def report(metrics, model=None, state=None):
        last.update(metrics=metrics, model=model)
        meter.update(task, metrics["epoch"], f"train loss {metrics['train_loss']:.3f}")

    t0 = time.time()
    final = run_trial(config, full, report)
    if final["status"] != Status.COMPLETED or last.get("model") is None:
        return {"seed": config["seed"], "status": final["status"],
                "reason": final.get("reason", ""), "test_acc": float("nan")}, None
    model = last["model"]
    dev = to_device(full, next(model.parameters()).device)
    x_test = torch.as_tensor(data.x_test).to(dev.x_train.device)
    probs = probabilities(model, x_test, dev, config).cpu()
    test_loss, test_acc = scores(probs, torch.as_tensor(data.y_test).long())
    torch.save(model.state_dict(), weights)
    return {"seed": config["seed"], "status": Status.COMPLETED, "test_acc": test_acc,
            "test_loss": test_loss, "train_loss": final["train_loss"],
            "seconds": round(time.time() - t0, 1), "weights": weights.name}, probs


def _merge(path: Path, summary: dict, *keys: str) -> None:
    """`summary` merged into the results file `path`: at its top level, or under `keys`
    (e.g. "starting_points", name), beside what is there."""
    results = json.loads(path.read_text()) if path.is_file() else {}
    place = results
    for key in keys[:-1]:
        place = place.setdefault(key, {})
    if keys:
        place[keys[-1]] = summary
    else:
        results.update(summary)
    write_json(path, results)
