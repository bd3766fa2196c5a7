"""What hpo's search buys over what a user would run instead, on the same budget.

Every method searches the same space file with the same trainable (hpo.train.run_trial), the
same data and split, the same CPUs or GPUs, and the same budget: training epochs summed over
all its trials, and a wall-clock cap; whichever is spent first ends the run.

    hpo               hpo as it ships (hpo.tuning.run_study, the space's sampler)
    ray-optuna        Ray Tune's stock OptunaSearch (TPE) + ASHAScheduler
    ray-random        random search + ASHAScheduler on Ray Tune
    optuna-hyperband  Optuna alone: TPE + HyperbandPruner, trials in threads of one process
    hpo:<sampler>[:<startup>]
                      hpo with another of hpo.registry.SAMPLERS and/or start-up trial count,
                      e.g. hpo:tpe-multivariate, hpo:gp, hpo:tpe:5

For each method and seed: every epoch's validation accuracy in the order it was reached gives
the anytime curve (best so far vs epochs spent); the config of the best trial is retrained
once on train + validation for max_epochs and tested; trials run, trials wasted (infeasible,
duplicate, diverged, out of memory) and wall time are counted. The baselines get no starting
points: those are one of hpo's choices under test.

    python bench/search_quality.py --json sq.json --png sq.png      # CPU form (~1 h on 2 cores)
    python bench/search_quality.py --full --gpus 0.25 --json sq-gpu.json   # full size, a GPU
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import torch  # noqa: E402
from common import DEFAULT_DATA, REPO, provenance  # noqa: E402
from dimensions import trial_configs  # noqa: E402

from hpo.data import Dataset, load_dataset  # noqa: E402
from hpo.plan import apply_budget  # noqa: E402
from hpo.registry import SAMPLERS  # noqa: E402
from hpo.space import Space, load_space  # noqa: E402

BASELINES = ("ray-optuna", "ray-random", "optuna-hyperband")
DEFAULT_METHODS = ("hpo", *BASELINES)
WASTE = ("infeasible", "duplicate", "diverged", "oom")
# The CPU form: a fixed 3% of CIFAR-10 (1,350 training images), 3-epoch trials
SMALL = dict(fraction=0.03, max_epochs=3, grace_period=1, epoch_budget=30, time_cap=4.0)
# The full size on a GPU: all of CIFAR-10, the space's own epochs, ~64 trials' worth
FULL = dict(fraction=1.0, max_epochs=None, grace_period=None, epoch_budget=400, time_cap=60.0)


@dataclasses.dataclass
class Run:
    """One method's search with one seed: what it reached, and at what cost."""

    method: str
    seed: int
    events: list[tuple[float, str, int, float]]  # (time, trial, epoch, val_acc), epoch >= 1
    configs: dict[str, dict]  # trial -> its complete config
    statuses: dict[str, str]  # trial -> how it ended (a leaderboard status)
    wall_s: float
    t0: float  # when the search began: the wall-clock cap counts from here
    rejected: int = 0  # draws refused before they became trials (hpo only)
    duplicates: int = 0  # trials that repeat an earlier trial's config

    def within(self, seconds: float) -> Run:
        """This run with only the epochs it reached within `seconds` of its start: Optuna's
        timeout lets running trials finish the epoch they are in, Ray stops them at once."""
        return dataclasses.replace(self, events=[e for e in self.events
                                                 if e[0] <= self.t0 + seconds])

    def curve(self) -> list[tuple[int, float]]:
        """(epochs spent, best validation accuracy so far) after every epoch, in time order."""
        best, out = -math.inf, []
        for i, (_, _, _, acc) in enumerate(sorted(self.events), 1):
            if acc is not None and math.isfinite(acc):
                best = max(best, acc)
            out.append((i, best if math.isfinite(best) else 0.0))
        return out

    def chosen(self) -> tuple[str | None, float]:
        """The trial with the highest validation accuracy at any epoch, and that accuracy."""
        best = max(((acc, trial) for _, trial, _, acc in self.events
                    if acc is not None and math.isfinite(acc)), default=(0.0, None))
        return best[1], best[0]

    def wasted(self) -> dict[str, int]:
        counts = {w: sum(s == w for s in self.statuses.values()) for w in WASTE}
        counts["duplicate"] = self.duplicates
        return counts


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--space", default=str(REPO / "spaces" / "cifar10.py"))
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--full", action="store_true",
                   help="all the data, the space's epochs, a 400-epoch budget, 60 min: for a GPU")
    p.add_argument("--fraction", type=float)
    p.add_argument("--max-epochs", type=int)
    p.add_argument("--grace-period", type=int)
    p.add_argument("--epoch-budget", type=int, help="training epochs per search, all trials")
    p.add_argument("--time-cap", type=float, help="minutes of wall time per search")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help=f"comma-separated: {', '.join(DEFAULT_METHODS)}, hpo:<sampler>[:<n>]")
    p.add_argument("--cpus", type=int, help="CPUs for the trials (default: all)")
    p.add_argument("--gpus", type=float, default=0, help="GPUs per trial (Ray methods)")
    p.add_argument("--work", help="where the studies go (default: a temporary folder)")
    p.add_argument("--json", metavar="PATH", help="also write every figure here as JSON")
    p.add_argument("--png", metavar="PATH", help="draw the anytime curves here")
    args = p.parse_args(argv)
    for key, value in (FULL if args.full else SMALL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        _check_method(p, m)
    load_before = os.getloadavg()[0]
    cpus = args.cpus or len(os.sched_getaffinity(0))
    device = torch.device("cuda" if args.gpus and torch.cuda.is_available() else "cpu")

    space = apply_budget(load_space(args.space), max_epochs=args.max_epochs,
                         grace_period=args.grace_period)
    data = load_dataset(args.data, val_fraction=space.val_fraction, seed=0,
                        fraction=args.fraction, image_size=space.image_size,
                        channels=space.channels)
    work = Path(args.work or tempfile.mkdtemp(prefix="hpo-sq-"))
    work.mkdir(parents=True, exist_ok=True)
    budget = dict(epochs=args.epoch_budget, seconds=args.time_cap * 60, cpus=cpus,
                  gpus=args.gpus)
    print(f"{space.name}: {len(data.x_train)} training images, trials of up to "
          f"{space.max_epochs} epochs (ASHA from {space.grace_period}, 1/"
          f"{space.reduction_factor:g} kept), budget {args.epoch_budget} epochs or "
          f"{args.time_cap:g} min per search, {cpus} CPUs; studies in {work}", flush=True)

    results: dict[str, list[dict]] = {m: [] for m in methods}
    for seed in range(args.seeds):
        for method in methods:  # seeds outermost: a load spike hits every method alike
            saved = work / "runs" / f"{method.replace(':', '-')}-seed{seed}.json"
            if saved.is_file():  # a rerun with the same --work skips the searches done
                r = json.loads(saved.read_text())
            else:
                run = search(method, seed, space, args, data, work, budget)
                r = summarise(run.within(budget["seconds"]), space, data, work, device)
                saved.parent.mkdir(exist_ok=True)
                saved.write_text(json.dumps(r) + "\n")
            results[method].append(r)
            test = "diverged" if r["test_acc"] is None else f"{r['test_acc']:.4f}"
            print(f"  {method:<22} seed {seed}: best val {r['best_val']:.4f}, test "
                  f"{test}, {r['trials']} trials, wasted {r['wasted']}, "
                  f"{r['epochs_spent']} epochs, {r['wall_s']:.0f} s", flush=True)

    figures = {"provenance": provenance(device, load_before),
               "settings": {"space": Path(args.space).name, "data": Path(args.data).name,
                            "fraction": args.fraction, "training_images": len(data.x_train),
                            "max_epochs": space.max_epochs, "grace_period": space.grace_period,
                            "reduction_factor": space.reduction_factor,
                            "epoch_budget": args.epoch_budget, "time_cap_min": args.time_cap,
                            "seeds": args.seeds, "cpus": cpus, "gpus_per_trial": args.gpus},
               "methods": {m: aggregate(runs, args.epoch_budget) for m, runs in results.items()}}
    print_table(figures["methods"])
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    if args.png:
        draw(figures, args.png)


def _check_method(p: argparse.ArgumentParser, method: str) -> None:
    if method in DEFAULT_METHODS:
        return
    parts = method.split(":")
    if parts[0] == "hpo" and 2 <= len(parts) <= 3 and parts[1] in SAMPLERS and (
            len(parts) == 2 or parts[2].isdigit()):
        return
    p.error(f"unknown method {method!r}: one of {', '.join(DEFAULT_METHODS)} or "
            f"hpo:<sampler>[:<startup trials>] with a sampler in {', '.join(SAMPLERS)}")


def search(method: str, seed: int, space: Space, args, data: Dataset, work: Path,
           budget: dict) -> Run:
    """Run one search of `method` with `seed` under `budget` and return what it did."""
    if method.startswith("hpo"):
        return search_hpo(method, seed, space, args, work, budget)
    if method == "optuna-hyperband":
        return search_optuna(seed, space, data, budget)
    return search_ray(method, seed, space, data, work, budget)


def search_hpo(method: str, seed: int, space: Space, args, work: Path, budget: dict) -> Run:
    from hpo.options import SearchOptions
    from hpo.study import run_study

    path = Path(args.space)
    parts = method.split(":")
    if len(parts) > 1:  # a variant: the space file with its sampler settings appended
        path = work / f"{path.stem}-{'-'.join(parts[1:])}.py"
        path.write_text(Path(args.space).read_text() + f"\nsampler = {parts[1]!r}\n" + (
            f"startup_trials = {int(parts[2])}\n" if len(parts) == 3 else ""))
    name = f"{method.replace(':', '-')}-seed{seed}"
    options = SearchOptions(
        data=args.data, trials=10_000, max_epochs=space.max_epochs,
        grace_period=space.grace_period, name=name, fraction=args.fraction, seed=seed,
        epoch_budget=budget["epochs"], time_budget=budget["seconds"], num_cpus=budget["cpus"],
        gpus_per_trial=budget["gpus"] or None, results=str(work / "hpo"), fresh=False)
    from rich.console import Console

    t0 = time.time()
    with open(work / f"{name}.log", "w") as log:
        folder = run_study(path, options, console=Console(file=log, width=120))
    wall = time.time() - t0
    import pandas as pd

    epochs = pd.read_csv(folder / "epochs.csv")
    board = pd.read_csv(folder / "leaderboard.csv")
    meta = json.loads((folder / "study.json").read_text())
    configs = trial_configs(folder)
    events = [(r.t_end, str(r.trial_id), int(r.epoch), float(r.val_acc))
              for r in epochs.itertuples() if r.epoch >= 1]
    return Run(method, seed, events, configs,
               {str(r.trial_id): r.status for r in board.itertuples()}, wall, t0,
               # a repeated draw reuses the earlier result (study.json's "duplicates"):
               # hpo never runs one
               rejected=meta.get("rejected", 0), duplicates=0)


class _Budget:
    """The budget of a baseline's search: epochs trained by all its trials, and wall time."""

    def __init__(self, epochs: int, seconds: float):
        self.epochs, self.seconds, self.t0 = epochs, seconds, time.time()
        self.spent, self.lock = 0, threading.Lock()

    def count(self, epoch: int) -> None:
        if epoch >= 1:
            with self.lock:
                self.spent += 1

    def over(self) -> bool:
        return self.spent >= self.epochs or time.time() - self.t0 >= self.seconds

    def __getstate__(self):  # Tune pickles its run config, stopper and all
        return {k: v for k, v in self.__dict__.items() if k != "lock"}

    def __setstate__(self, state):
        self.__dict__.update(state, lock=threading.Lock())


def search_ray(method: str, seed: int, space: Space, data: Dataset, work: Path,
               budget: dict) -> Run:
    """Ray Tune as its docs show it: OptunaSearch over the space's define-by-run sampler
    (TPE, or random draws), ASHAScheduler on the epoch, the space's trials as function
    trainables reporting every epoch."""
    import optuna
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = (optuna.samplers.TPESampler(seed=seed) if method == "ray-optuna"
               else optuna.samplers.RandomSampler(seed=seed))

    spent = _Budget(budget["epochs"], budget["seconds"])

    class Stop(tune.Stopper):
        def __call__(self, trial_id, result):
            spent.count(result.get("epoch", 0))
            return False

        def stop_all(self):
            return spent.over()

    resources = {"cpu": 1, "gpu": budget["gpus"]}
    t0 = time.time()  # Ray's start counts, as it does in hpo's search
    ray.init(address="local", num_cpus=budget["cpus"], include_dashboard=False,
             log_to_driver=False)
    try:
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(_ray_trial, data=data.without_test()),
                                resources),
            tune_config=tune.TuneConfig(
                search_alg=OptunaSearch(_DefineByRun(space), metric=space.metric, mode=space.mode,
                                        sampler=sampler),
                scheduler=ASHAScheduler(time_attr="epoch", max_t=space.max_epochs,
                                        grace_period=space.grace_period,
                                        reduction_factor=space.reduction_factor),
                metric=space.metric, mode=space.mode, num_samples=-1,
                max_concurrent_trials=max(1, int(budget["cpus"]))),
            run_config=tune.RunConfig(name=f"{method}-seed{seed}", storage_path=str(work / "ray"),
                                      stop=Stop(), verbose=0, log_to_file=True))
        grid = tuner.fit()
    finally:
        ray.shutdown()
    wall = time.time() - t0
    events, configs, statuses = [], {}, {}
    for i, result in enumerate(grid):
        df = result.metrics_dataframe
        if not result.config or df is None or not len(df):
            continue  # still pending when the budget ran out: never trained
        trial = str(i)
        configs[trial] = result.config
        for row in df.itertuples():
            if getattr(row, "epoch", 0) >= 1:
                events.append((row.t_end, trial, int(row.epoch), float(row.val_acc)))
        last = df["status"].iloc[-1] if "status" in df else "stopped"
        statuses[trial] = "stopped" if last == "running" else last
    return Run(method, seed, events, configs, statuses, wall, t0,
               duplicates=_duplicates(configs))


class _DefineByRun:
    """The space's sampler as OptunaSearch's define-by-run function: the suggested values
    are the trial's params, the rest of the complete config its constants. Pickled (Tune saves
    its searcher with plain pickle, and a space holds lambdas) as the space file and budget."""

    def __init__(self, space: Space):
        self.space = space

    def __call__(self, trial) -> dict:
        config = self.space.sample(trial)
        return {k: v for k, v in config.items() if k not in trial.params}

    def __getstate__(self):
        s = self.space
        return {"path": str(s.path), "max_epochs": s.max_epochs, "grace": s.grace_period}

    def __setstate__(self, state):
        self.space = apply_budget(load_space(state["path"]), max_epochs=state["max_epochs"],
                                  grace_period=state["grace"])


def _ray_trial(config: dict, data: Dataset) -> None:
    from ray import tune

    from hpo.train import run_trial

    def report(metrics, model=None, state=None):
        tune.report({**metrics, "t_end": time.time()})

    run_trial(config, data, report)


def search_optuna(seed: int, space: Space, data: Dataset, budget: dict) -> Run:
    """Optuna as its docs show it: TPE with HyperbandPruner over the epochs, study.optimize
    with one thread per CPU (torch single-threaded in each), no Ray."""
    import optuna

    from hpo.train import run_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize" if space.mode == "max" else "minimize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.HyperbandPruner(min_resource=space.grace_period,
                                              max_resource=space.max_epochs,
                                              reduction_factor=round(space.reduction_factor)))
    spent = _Budget(budget["epochs"], budget["seconds"])
    events, configs, statuses, lock = [], {}, {}, threading.Lock()
    # its threads share one device, as the Ray methods' trials share theirs
    device = "cuda" if budget["gpus"] and torch.cuda.is_available() else "cpu"
    train_only = data.without_test()

    class Spent(Exception):
        pass

    def objective(trial):
        config = space.sample(trial)
        tid = str(trial.number)
        with lock:
            configs[tid] = config
        statuses[tid] = "stopped"

        def report(metrics, model=None, state=None):
            epoch, value = metrics.get("epoch", 0), metrics.get(space.metric)
            if epoch >= 1:
                with lock:
                    events.append((time.time(), tid, epoch, value))
                spent.count(epoch)
                trial.report(value, epoch)
            statuses[tid] = metrics.get("status", "running")
            if spent.over():
                study.stop()
                raise Spent
            if epoch >= 1 and trial.should_prune():
                raise optuna.TrialPruned

        last = run_trial(config, train_only, report, device=device)
        return last.get(space.metric) or 0.0

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.time()
    try:
        study.optimize(objective, n_jobs=max(1, int(budget["cpus"])), catch=(Spent,),
                       timeout=budget["seconds"])
    finally:
        torch.set_num_threads(threads)
    statuses = {t: "stopped" if s == "running" else s for t, s in statuses.items()}
    return Run("optuna-hyperband", seed, events, configs, statuses, time.time() - t0, t0,
               duplicates=_duplicates(configs))


def _duplicates(configs: dict[str, dict]) -> int:
    from hpo.record import config_key

    keys = [config_key(c) for _, c in sorted(configs.items(), key=lambda kv: int(kv[0]))]
    return len(keys) - len(set(keys))


def summarise(run: Run, space: Space, data: Dataset, work: Path,
              device: torch.device) -> dict:
    """One run's figures, with its chosen config retrained once (seed 0) and tested."""
    from rich.console import Console

    from hpo.final import retrain

    trial, best_val = run.chosen()
    test_acc = None
    if trial is not None:
        config = {**run.configs[trial], "epochs": space.max_epochs}
        config.pop("trial", None)
        out = work / "final" / f"{run.method.replace(':', '-')}-seed{run.seed}"
        done = retrain(config, data, [0], out, console=Console(file=io.StringIO()))
        if math.isfinite(done["mean"]):  # else it diverged when retrained: no test figure
            test_acc = done["mean"]
        for file in out.glob("*.pt"):  # the weights are not a figure
            file.unlink()
    curve = run.curve()
    return {"seed": run.seed, "best_val": best_val, "test_acc": test_acc,
            "trials": len(run.configs), "wasted": run.wasted(), "rejected": run.rejected,
            "epochs_spent": len(curve), "wall_s": round(run.wall_s, 1), "curve": curve,
            "chosen_trial": trial}


def aggregate(runs: list[dict], epoch_budget: int) -> dict:
    """Mean and spread over seeds: of the best validation accuracy at the full budget, of the
    test accuracy, and of the anytime curve at every epoch of the budget (a run that stopped
    on the wall-clock cap holds its last value)."""
    def at(curve, e):
        value = 0.0
        for spent, best in curve:
            if spent > e:
                break
            value = best
        return value

    grid = list(range(1, epoch_budget + 1))
    per_seed = [[at(r["curve"], e) for e in grid] for r in runs]
    vals = [r["best_val"] for r in runs]
    tests = [r["test_acc"] for r in runs if r["test_acc"] is not None]
    # a chosen config that diverged when retrained has no test accuracy: counted, not averaged

    def stats(xs):
        return (statistics.fmean(xs) if xs else None,
                statistics.stdev(xs) if len(xs) > 1 else 0.0)

    return {"best_val_mean": stats(vals)[0], "best_val_std": stats(vals)[1],
            "test_mean": stats(tests)[0], "test_std": stats(tests)[1],
            "retrain_diverged": len(runs) - len(tests),
            "trials_mean": statistics.fmean(r["trials"] for r in runs),
            "wasted_total": {w: sum(r["wasted"][w] for r in runs) for w in WASTE},
            "rejected_total": sum(r["rejected"] for r in runs),
            "wall_s_mean": statistics.fmean(r["wall_s"] for r in runs),
            "anytime": {"epochs": grid,
                        "mean": [statistics.fmean(c) for c in zip(*per_seed)],
                        "min": [min(c) for c in zip(*per_seed)],
                        "max": [max(c) for c in zip(*per_seed)]},
            "runs": runs}


def print_table(methods: dict) -> None:
    print(f"\n{'method':<22} {'best val (full budget)':>22} {'test (retrained)':>18} "
          f"{'trials':>7} {'wasted':>7} {'rejected':>8} {'wall s':>7}")
    for m, f in methods.items():
        print(f"{m:<22} {f['best_val_mean']:>14.4f} ± {f['best_val_std']:.4f} "
              f"{_pm(f['test_mean'], f['test_std']):>18} {f['trials_mean']:>7.1f} "
              f"{sum(f['wasted_total'].values()):>7} {f['rejected_total']:>8} "
              f"{f['wall_s_mean']:>7.0f}")


def _pm(mean, std) -> str:
    return "-" if mean is None else f"{mean:.4f} ± {std:.4f}"


def draw(figures: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m, f in figures["methods"].items():
        a = f["anytime"]
        ax.plot(a["epochs"], a["mean"], label=m)
        ax.fill_between(a["epochs"], a["min"], a["max"], alpha=0.15)
    s = figures["settings"]
    ax.set(xlabel="training epochs spent (all trials)", ylabel="best validation accuracy",
           title=f"{s['space']}, {s['training_images']} images, mean and range over "
                 f"{s['seeds']} seeds")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
