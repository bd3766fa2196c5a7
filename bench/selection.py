"""How often a study's single-run top-1 is not the best mean of its top k, and what choosing
by the mean (hpo search's --select, issue 22 item 3) gains in test accuracy.

It reads the hpo studies bench/search_quality.py left in its --work folder (searched with
--select 0, so each config ran once) and, for each, does what the selection does, without
Ray: the top k completed configs by single-run validation accuracy train again at their full
epochs with --seeds more seeds each (the config's seed + 1, + 2, ...), on the same split.
The winner by mean over its runs is set against the single-run top-1 (the best finished
trial, hpo's choice without the selection). Where they differ, each is retrained on train +
validation with --test-seeds seeds and tested, as `hpo train --seeds` does; where they are
the same config, the gain is 0 and nothing is retrained.

    python bench/search_quality.py --dataset digits --seeds 5 --methods hpo,... --work W
    python bench/selection.py --dataset digits --work W --json selection.json

Trains on the CPU (the studies' own device in a GPU form is left to bench/gpu.py).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import provenance  # noqa: E402
from search_quality import DATASETS, SMALL, dataset_paths  # noqa: E402

from hpo.data import load_dataset  # noqa: E402
from hpo.plan import apply_budget  # noqa: E402
from hpo.record import Record  # noqa: E402
from hpo.registry import best_of  # noqa: E402
from hpo.selection import pending  # noqa: E402
from hpo.space import load_space  # noqa: E402
from hpo.status import FINISHED, Status  # noqa: E402


def best_value(config: dict, data, metric: str, mode: str) -> float | None:
    """One run of `config` to its full epochs: its best epoch's `metric` (None: none finite)."""
    from hpo.train import run_trial

    seen = []

    def report(metrics, model=None, state=None):
        value = metrics.get(metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            seen.append(value)

    run_trial(config, data, report)
    return best_of(seen, mode)


def study_figures(folder: Path, data, space, k: int, seeds: int, test_seeds: int,
                  work: Path) -> dict | None:
    from rich.console import Console

    from hpo.final import retrain

    metric, mode = space.metric, space.mode
    record = Record.load(f"sqlite:///{(folder / 'study.db').resolve()}", folder.name)
    single = record.top(metric, mode, FINISHED, 1)
    if not single or not record.top(metric, mode, {Status.COMPLETED}, 1):
        print(f"  {folder.name}: no completed trial, left out", flush=True)
        return None
    single = single[0]
    # the selection's own choice of reruns and of the winner (hpo.selection, Record.best),
    # its runs kept in memory: the study on disk is not changed
    for number, seed in pending(record, metric, mode, k, seeds):
        t = record.trials[number]
        value = best_value({**t.config, "seed": seed, "epochs": space.max_epochs},
                           data.without_test(), metric, mode)
        t.reruns.append({"seed": seed, "value": value})
    runs = {t.number: t.runs(metric, mode) for t in record.real() if t.reruns}
    for number, values in runs.items():
        print(f"  {folder.name} trial {number}: {metric} runs "
              f"{', '.join(f'{v:.4f}' for v in values)}", flush=True)
    chosen = record.best(metric, mode)
    out = {"study": folder.name, "trials": len(record.real()), "single": single.number,
           "single_value": single.best(metric, mode)[0], "chosen": chosen.number,
           "chosen_mean": chosen.mean(metric, mode)[0],
           "runs": {str(n): v for n, v in runs.items()},
           "differs": chosen.number != single.number}
    if out["differs"]:
        tests = {}
        for name, t in (("single", single), ("chosen", chosen)):
            config = {**t.config, "epochs": space.max_epochs}
            done = retrain(config, data, list(range(test_seeds)),
                           work / "selection" / f"{folder.name}-{name}",
                           console=Console(file=io.StringIO()))
            tests[name] = done["mean"]
        out.update(single_test=tests["single"], chosen_test=tests["chosen"],
                   gain=tests["chosen"] - tests["single"])
    else:
        out["gain"] = 0.0
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=DATASETS, default="digits")
    p.add_argument("--space", help="the space file the searches used (default: the dataset's)")
    p.add_argument("--data", help="the data the searches used (default: the dataset's)")
    p.add_argument("--work", required=True, help="bench/search_quality.py's --work folder")
    p.add_argument("--method", default="hpo", help="whose studies (default hpo)")
    p.add_argument("--k", type=int, default=3, help="configs rerun per study (default 3)")
    p.add_argument("--seeds", type=int, default=2, help="more seeds each (default 2)")
    p.add_argument("--test-seeds", type=int, default=3,
                   help="seeds of each retrain on train + validation (default 3)")
    for key in ("fraction", "max_epochs", "grace_period"):  # as the searches had them
        p.add_argument(f"--{key.replace('_', '-')}", type=float if key == "fraction" else int)
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    for key, value in SMALL[args.dataset].items():
        if getattr(args, key, 0) is None:
            setattr(args, key, value)
    load_before = os.getloadavg()[0]
    work = Path(args.work)
    space_path, data_path = dataset_paths(args.dataset, args.space, args.data, work)
    space = apply_budget(load_space(space_path), max_epochs=args.max_epochs,
                         grace_period=args.grace_period)
    data = load_dataset(data_path, val_fraction=space.val_fraction, seed=0,
                        fraction=args.fraction, image_size=space.image_size,
                        channels=space.channels)
    prefix = f"{args.method.replace(':', '-')}-seed"
    folders = sorted((f for f in (work / "hpo").glob(f"{prefix}*") if (f / "study.db").is_file()),
                     key=lambda f: int(f.name[len(prefix):]))
    if not folders:
        p.error(f"no {prefix}N study with a study.db in {work / 'hpo'}")
    studies = [s for f in folders
               if (s := study_figures(f, data, space, args.k, args.seeds, args.test_seeds,
                                      work))]
    differs = [s for s in studies if s["differs"]]
    gains = [s["gain"] for s in studies]
    figures = {"provenance": provenance(torch.device("cpu"), load_before),
               "settings": {"dataset": args.dataset, "method": args.method, "k": args.k,
                            "seeds": args.seeds, "test_seeds": args.test_seeds},
               "studies": studies, "differs": len(differs), "of": len(studies),
               "mean_gain": statistics.fmean(gains),
               "mean_gain_where_differs": statistics.fmean(s["gain"] for s in differs)
               if differs else None}
    for s in studies:
        line = (f"{s['study']}: single-run top-1 trial {s['single']} ({s['single_value']:.4f}),"
                f" best mean trial {s['chosen']} ({s['chosen_mean']:.4f})")
        if s["differs"]:
            line += (f"; test {s['single_test']:.4f} -> {s['chosen_test']:.4f} "
                     f"({s['gain']:+.4f})")
        print(line)
    print(f"the best mean was not the single-run top-1 in {len(differs)} of {len(studies)} "
          f"studies; mean test gain {figures['mean_gain']:+.4f} over all studies")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
