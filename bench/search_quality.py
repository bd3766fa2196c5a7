"""What hpo's search buys over what a user would run instead, on the same budget, and which of
hpo's choices buys it.

Every method searches the same space file with the same trainable (hpo.train.run_trial), the
same data and split, the same CPUs or GPUs, and the same budget: training epochs summed over
all its trials, with a wall-clock cap as a safety; whichever is spent first ends the search.
The CPU forms' budget is 64 full trials' epochs, so every search runs 64 trials or more
(more where ASHA stops trials early), and the sampler, not its random start-up draws, decides
what a search finds.

Methods (--methods, comma-separated; the defaults depend on --dataset):

    hpo               hpo as it ships (hpo.study.run_study): the space's starting points first,
                      draws that cannot be built or would not fit rejected before they become
                      trials (hpo.tuning.placement.feasibility), the space's sampler, hpo's ASHA
    hpo:<tokens>      hpo with one or more of hpo's choices changed, tokens joined by ':'
                        <sampler>[:<n>]  another of hpo.registry.SAMPLERS and/or n start-up
                                         trials (hpo:tpe-multivariate:3, hpo:tpe:10, hpo:gp)
                        nopoints         a copy of the space file without starting_points
                        noreject         no draw rejected: every draw becomes a trial, as on
                                         stock Ray Tune (the infeasible ones end at epoch 0)
                        warm             --warm-start from an hpo study of the same seed on a
                                         quarter of the data and half the epoch budget (each
                                         epoch a quarter the cost), run first; the curve
                                         counts the new search's epochs, the earlier study's
                                         are reported apart (the run's "source")
                      hpo:nopoints:noreject is hpo's sampler and ASHA alone
    ray-optuna        Ray Tune's stock OptunaSearch (Optuna's default TPE) + ASHAScheduler
    ray-optuna:<sampler>[:<n>]
                      the same with hpo's sampler as hpo builds it (hpo.record.make_sampler;
                      n: start-up trials, default the space's): hpo's sampler on stock Ray
    ray-random        random search + ASHAScheduler on Ray Tune
    optuna-hyperband  Optuna alone: TPE + HyperbandPruner, trials in threads of one process

The stock baselines get no starting points and reject nothing: those are hpo's choices under
test, and the ablations above take them away one at a time.

Datasets (--dataset):

    cifar10   ../shared/datasets/cifar10 (Parquet) with spaces/cifar10.py; the CPU form trains
              on a fixed 3% (1,350 training, 150 validation images), 2-epoch trials
    digits    scikit-learn's 8x8 digits (1,797 images, shipped offline), written by
              bench/digits.py into <work>/data/digits as a folder of class folders with a
              fixed-seed fifth held out as test/, searched with spaces/imagefolder.py as
              shipped but for image_size 16 and channels 1 (written to <work>/spaces/); 2-epoch
              trials.

For each method and seed: every epoch's validation accuracy in the order it was reached gives
the anytime curve (best so far vs epochs spent); the best validation accuracy at the full
budget; the config of the best trial retrained once (seed 0) on train + validation for
max_epochs and tested; trials run, trials wasted (infeasible, duplicate, diverged, out of
memory), draws rejected, and wall time. Then, per pair of methods (--compare; default every
pair but stock against stock), paired by seed: the per-seed differences of best validation
accuracy, of test accuracy and of the anytime curve's mean over the budget, each with its
mean, a 95% Student-t interval, a percentile bootstrap and an exact sign test
(bench/paired.py). With n seeds the sign test's smallest p is 2/2^n: 0.0625 for 5 seeds,
0.031 for 6, hence 6 seeds below. A search already in <work>/runs/ is read back,
not run again: the same command continues after a stop, and more --seeds add seeds;
with --done it runs nothing and reports the searches there so far.

The measurement runs, CPU, one per dataset (2 cores; the wall time is measured seconds per
search times the searches, from the validation runs in BENCHMARKS.md, "Search quality, paired
by seed: the method"):

    python bench/search_quality.py --dataset digits --seeds 6 --work sq-digits \\
        --json sq-digits.json --png sq-digits.png        # 7 methods x 6 seeds = 42 searches
    python bench/search_quality.py --dataset cifar10 --seeds 6 --work sq-cifar10 \\
        --json sq-cifar10.json --png sq-cifar10.png      # 8 methods x 6 seeds = 48 searches
    python bench/search_quality.py --rows sq-cifar10.json   # BENCHMARKS.md's rows from one

On CIFAR-10 the stock searches are the long pole: at 1% of the data (--fraction 0.01) a
ray-optuna search took 12 to 60 minutes on the 2-core VM (the long ones with another search
beside them), one of hpo's 5 to 30. The CIFAR-10 run in BENCHMARKS.md is that 1% form, run
over more than one sitting; --done reports the searches finished so far:

    python bench/search_quality.py --dataset cifar10 --fraction 0.01 --seeds 5 \\
        --methods hpo,ray-optuna,optuna-hyperband --work sq-c1 [--done] --json sq-c1.json

On a GPU (all of CIFAR-10, the space's epochs, a 400-epoch budget, a 60 min cap per search;
bench/gpu.py runs a sized-down form of it with the four methods named):

    python bench/search_quality.py --full --gpus 0.25 --json sq-gpu.json --png sq-gpu.png
"""

from __future__ import annotations

import argparse
import contextlib
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
from paired import paired  # noqa: E402

from hpo.data import Dataset, load_dataset  # noqa: E402
from hpo.plan import apply_budget  # noqa: E402
from hpo.registry import SAMPLERS  # noqa: E402
from hpo.space import Space, load_space  # noqa: E402

BASELINES = ("ray-optuna", "ray-random", "optuna-hyperband")  # stock: what a user runs instead
WASTE = ("infeasible", "duplicate", "diverged", "oom")
DATASETS = ("cifar10", "digits")
METHODS = {
    # hpo, each of its choices taken away, its sampler alone (in hpo and on stock Ray Tune),
    # and the three stock baselines
    "cifar10": ("hpo", "hpo:nopoints", "hpo:noreject", "hpo:nopoints:noreject",
                "ray-optuna:tpe-multivariate:3", *BASELINES),
    # spaces/imagefolder.py's sampler is hpo's default (univariate TPE, 10 start-up): the
    # CIFAR-10 space's sampler is the fourth variant here. hpo rejected no draw of that
    # space at 16 px (0 in 10 searches), so noreject would change nothing; hpo:warm is the
    # warm start
    "digits": ("hpo", "hpo:nopoints", "hpo:warm", "hpo:tpe-multivariate:3", *BASELINES),
}
# The CPU forms: 2-epoch trials and a budget of 64 x 2 epochs, so that every search runs 64
# trials or more whatever ASHA stops (those it stops after epoch 1 make room for more)
SMALL = {
    "cifar10": dict(fraction=0.03, max_epochs=2, grace_period=1, epoch_budget=128,
                    time_cap=90.0),
    "digits": dict(fraction=1.0, max_epochs=2, grace_period=1, epoch_budget=128,
                   time_cap=40.0),
}
# The full size on a GPU: all of the data, the space's own epochs, ~64 trials' worth
# A tenth of the digits would leave 21 validation images to rank the earlier study's trials by
WARM_FRACTION, WARM_BUDGET = 0.25, 0.5
FULL = dict(fraction=1.0, max_epochs=None, grace_period=None, epoch_budget=400, time_cap=60.0)


@dataclasses.dataclass(frozen=True)
class Method:
    """A method's name taken apart: which search, and what of hpo's choices it changes."""

    name: str
    base: str  # "hpo" or one of BASELINES
    sampler: str | None = None  # None: the space's (hpo) or the stock one (ray-optuna)
    startup: int | None = None
    points: bool = True  # hpo: the space's starting points first
    reject: bool = True  # hpo: infeasible draws rejected before they become trials
    warm: bool = False  # hpo: --warm-start from a study on WARM_FRACTION of the data

    @property
    def stock(self) -> bool:
        return self.name in BASELINES


def parse_method(name: str) -> Method:
    """`name` as a Method; ValueError saying what is allowed otherwise."""
    parts = name.split(":")
    base, tokens = parts[0], parts[1:]
    if base in ("ray-random", "optuna-hyperband") and not tokens:
        return Method(name, base)
    if base not in ("hpo", "ray-optuna"):
        raise ValueError(_grammar(name))
    kw: dict = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token in SAMPLERS and "sampler" not in kw:
            kw["sampler"] = token
            if i + 1 < len(tokens) and tokens[i + 1].isdigit():
                kw["startup"] = int(tokens[i + 1])
                i += 1
        elif base == "hpo" and token == "nopoints" and "points" not in kw:
            kw["points"] = False
        elif base == "hpo" and token == "noreject" and "reject" not in kw:
            kw["reject"] = False
        elif base == "hpo" and token == "warm" and "warm" not in kw:
            kw["warm"] = True
        else:
            raise ValueError(_grammar(name))
        i += 1
    return Method(name, base, **kw)


def _grammar(name: str) -> str:
    return (f"unknown method {name!r}: one of {', '.join(BASELINES)}, "
            f"ray-optuna:<sampler>[:<n>], or hpo[:<sampler>[:<n>]][:nopoints][:noreject][:warm], "
            f"with a sampler in {', '.join(SAMPLERS)} and n start-up trials")


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
    source: dict | None = None  # hpo:warm: what the study it started from cost
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
        """The trial with the highest validation accuracy at any epoch, and that accuracy;
        of trials tied there, the first to reach it, as the anytime curve counts it. (Until
        2026-12-06 a tie went to the largest trial id as a string: arbitrary, and on a
        saturated validation split most bests are ties.)"""
        best, trial = -math.inf, None
        for _, t, _, acc in sorted(self.events):
            if acc is not None and math.isfinite(acc) and acc > best:
                best, trial = acc, t
        return trial, (best if trial is not None else 0.0)

    def wasted(self) -> dict[str, int]:
        counts = {w: sum(s == w for s in self.statuses.values()) for w in WASTE}
        counts["duplicate"] = self.duplicates
        return counts


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=DATASETS, default="cifar10",
                   help="which data and space (default cifar10); --data and --space override")
    p.add_argument("--space", help="the space file (default: the dataset's)")
    p.add_argument("--data", help="the data (default: the dataset's; for digits, where its "
                   "folder is written, if it is not there yet)")
    p.add_argument("--full", action="store_true",
                   help="all the data, the space's epochs, a 400-epoch budget, 60 min: for a GPU")
    p.add_argument("--fraction", type=float)
    p.add_argument("--max-epochs", type=int)
    p.add_argument("--grace-period", type=int)
    p.add_argument("--epoch-budget", type=int, help="training epochs per search, all trials")
    p.add_argument("--time-cap", type=float, help="minutes of wall time per search")
    p.add_argument("--seeds", type=int, default=6,
                   help="seeds 0..N-1, the same for every method (default 6: see above)")
    p.add_argument("--methods", help="comma-separated (see above; default: the dataset's "
                   "ablations and baselines)")
    p.add_argument("--compare", help="comma-separated pairs A/B: compare A - B per seed "
                   "(default: every pair of methods in --methods order, but stock vs stock)")
    p.add_argument("--cpus", type=int, help="CPUs for the trials (default: all)")
    p.add_argument("--gpus", type=float, default=0, help="GPUs per trial (Ray methods)")
    p.add_argument("--work", help="where the data, studies and finished searches go "
                   "(default: a temporary folder); the same --work continues a run")
    p.add_argument("--json", metavar="PATH", help="also write every figure here as JSON")
    p.add_argument("--png", metavar="PATH", help="draw the anytime curves here")
    p.add_argument("--done", action="store_true",
                   help="run no search: report those already in --work, each method over the "
                        "seeds it has and each pair over the seeds both have (a long run's "
                        "figures so far)")
    p.add_argument("--rows", metavar="JSON",
                   help="print BENCHMARKS.md's rows of a --json file of this script, and exit")
    args = p.parse_args(argv)
    if args.rows:
        from search_rows import render

        print(render(json.loads(Path(args.rows).read_text())))
        return
    for key, value in (FULL if args.full else SMALL[args.dataset]).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    names = [m.strip() for m in (args.methods or ",".join(METHODS[args.dataset])).split(",")
             if m.strip()]
    if args.done and not args.work:
        p.error("--done reads the searches in --work: give it")
    try:
        methods = [parse_method(m) for m in names]
        pairs = comparisons(names, args.compare)
    except ValueError as exc:
        p.error(str(exc))
    load_before = os.getloadavg()[0]
    cpus = args.cpus or len(os.sched_getaffinity(0))
    device = torch.device("cuda" if args.gpus and torch.cuda.is_available() else "cpu")

    work = Path(args.work or tempfile.mkdtemp(prefix="hpo-sq-"))
    work.mkdir(parents=True, exist_ok=True)
    args.space, args.data = dataset_paths(args.dataset, args.space, args.data, work)
    space = apply_budget(load_space(args.space), max_epochs=args.max_epochs,
                         grace_period=args.grace_period)
    data = load_dataset(args.data, val_fraction=space.val_fraction, seed=0,
                        fraction=args.fraction, image_size=space.image_size,
                        channels=space.channels)
    budget = dict(epochs=args.epoch_budget, seconds=args.time_cap * 60, cpus=cpus,
                  gpus=args.gpus)
    print(f"{space.name} on {Path(args.data).name}: {len(data.x_train)} training, "
          f"{len(data.x_val)} validation, {len(data.x_test)} test images; trials of up to "
          f"{space.max_epochs} epochs (ASHA from {space.grace_period}, 1/"
          f"{space.reduction_factor:g} kept), budget {args.epoch_budget} epochs or "
          f"{args.time_cap:g} min per search, {cpus} CPUs; {len(methods)} methods x "
          f"{args.seeds} seeds; work in {work}", flush=True)

    results: dict[str, list[dict]] = {m.name: [] for m in methods}
    for seed in range(args.seeds):
        for method in methods:  # seeds outermost: a load spike hits every method alike
            saved = work / "runs" / f"{method.name.replace(':', '-')}-seed{seed}.json"
            if saved.is_file():  # a rerun with the same --work skips the searches done
                r = json.loads(saved.read_text())
            elif args.done:
                continue
            else:
                run = search(method, seed, space, args, data, work, budget)
                r = summarise(run.within(budget["seconds"]), space, data, work, device)
                saved.parent.mkdir(exist_ok=True)
                saved.write_text(json.dumps(r) + "\n")
            results[method.name].append(r)
            test = "diverged" if r["test_acc"] is None else f"{r['test_acc']:.4f}"
            print(f"  {method.name:<30} seed {seed}: best val {r['best_val']:.4f}, test "
                  f"{test}, {r['trials']} trials, wasted {r['wasted']}, rejected "
                  f"{r['rejected']}, {r['epochs_spent']} epochs, {r['wall_s']:.0f} s",
                  flush=True)

    if args.done:
        missing = [m for m, runs in results.items() if not runs]
        if missing:
            print(f"no search in {work / 'runs'} yet: {', '.join(missing)}", flush=True)
        results = {m: runs for m, runs in results.items() if runs}
        pairs = [(a, b) for a, b in pairs if a in results and b in results]
        if not results:
            sys.exit(f"search_quality: nothing to report in {work / 'runs'}")
    figures = {"provenance": provenance(device, load_before),
               "settings": {"dataset": args.dataset, "space": Path(args.space).name,
                            "data": Path(args.data).name, "fraction": args.fraction,
                            "training_images": len(data.x_train),
                            "validation_images": len(data.x_val),
                            "test_images": len(data.x_test),
                            "max_epochs": space.max_epochs, "grace_period": space.grace_period,
                            "reduction_factor": space.reduction_factor,
                            "sampler": space.sampler, "startup_trials": space.startup_trials,
                            "starting_points": list(space.starting_points),
                            "epoch_budget": args.epoch_budget, "time_cap_min": args.time_cap,
                            "seeds": args.seeds, "cpus": cpus, "gpus_per_trial": args.gpus,
                            **({"seeds_done": {m: [r["seed"] for r in runs]
                                               for m, runs in results.items()}}
                               if args.done else {})},
               "methods": {m: aggregate(runs, args.epoch_budget) for m, runs in results.items()}}
    figures["comparisons"] = [compare(results, a, b, args.epoch_budget) for a, b in pairs]
    print_table(figures["methods"])
    print_comparisons(figures["comparisons"])
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    if args.png:
        draw(figures, args.png)


def dataset_paths(dataset: str, space: str | None, data: str | None,
                  work: Path) -> tuple[str, str]:
    """The space file and the data of `dataset`, each unless given: for digits, both written
    into `work` (the data once, then reused)."""
    if dataset == "cifar10":
        return space or str(REPO / "spaces" / "cifar10.py"), data or str(DEFAULT_DATA)
    from digits import write_digits, write_space

    data = str(write_digits(Path(data) if data else work / "data" / "digits"))
    space = space or str(write_space(work / "spaces" / "imagefolder-digits.py"))
    return space, data


def comparisons(names: list[str], given: str | None) -> list[tuple[str, str]]:
    """The pairs of methods to compare: those `given` ("A/B,C/D"), else every pair in
    `names`' order but stock against stock. ValueError for a method not in `names`."""
    if given:
        pairs = [tuple(x.strip().split("/", 1)) for x in given.split(",") if x.strip()]
        for pair in pairs:
            if len(pair) != 2 or not all(m in names for m in pair):
                raise ValueError(f"--compare {'/'.join(pair)}: want A/B, both in --methods")
        return pairs
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1:]
            if not (a in BASELINES and b in BASELINES)]


def search(method: Method, seed: int, space: Space, args, data: Dataset, work: Path,
           budget: dict) -> Run:
    """Run one search of `method` with `seed` under `budget` and return what it did."""
    if method.base == "hpo":
        return search_hpo(method, seed, space, args, work, budget)
    if method.base == "optuna-hyperband":
        return search_optuna(seed, space, data, budget)
    return search_ray(method, seed, space, data, work, budget)


def variant_space(method: Method, source: Path, work: Path) -> Path:
    """The space file `method` searches: `source`, or a copy of it with the sampler settings
    and/or no starting points appended (a space file's last assignment is the one read)."""
    lines = []
    if method.sampler:
        lines.append(f"sampler = {method.sampler!r}")
    if method.startup is not None:
        lines.append(f"startup_trials = {method.startup}")
    if not method.points:
        lines.append("starting_points = {}  # hpo:nopoints")
    if not lines:
        return source
    tag = "-".join(t for t in method.name.split(":")[1:] if t not in ("noreject", "warm"))
    path = work / "spaces" / f"{source.stem}-{tag}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source.read_text() + "\n# bench/search_quality.py " + method.name + "\n"
                    + "\n".join(lines) + "\n")
    return path


@contextlib.contextmanager
def no_rejection():
    """hpo's driver with its check of draws switched off: the searcher gets no check
    (hpo.tuning.searcher.StudySearcher's check=None), so every draw becomes a trial and one
    that cannot be built ends as "infeasible" at epoch 0, as on stock Ray Tune. hpo offers no
    switch for this; the bench swaps the driver's `feasibility` for the length of one search."""
    import hpo.tuning.driver as driver

    saved = driver.feasibility
    driver.feasibility = lambda *args, **kwargs: None
    try:
        yield
    finally:
        driver.feasibility = saved


def search_hpo(method: Method, seed: int, space: Space, args, work: Path,
               budget: dict) -> Run:
    from hpo.options import SearchOptions
    from hpo.study import run_study

    path = variant_space(method, Path(args.space), work)
    name = f"{method.name.replace(':', '-')}-seed{seed}"
    options = SearchOptions(
        data=args.data, trials=10_000, max_epochs=space.max_epochs,
        grace_period=space.grace_period, name=name, fraction=args.fraction, seed=seed,
        epoch_budget=budget["epochs"], time_budget=budget["seconds"], num_cpus=budget["cpus"],
        gpus_per_trial=budget["gpus"] or None, results=str(work / "hpo"), fresh=False,
        # the selection's reruns would train outside the epoch budget the baselines get;
        # the search alone is compared, its best by one run's value as theirs is
        select=0)
    import pandas as pd
    from rich.console import Console

    source = None
    if method.warm:
        t0 = time.time()
        earlier = dataclasses.replace(
            options, name=f"{name}-source", fraction=args.fraction * WARM_FRACTION,
            epoch_budget=int(budget["epochs"] * WARM_BUDGET))
        with open(work / f"{name}-source.log", "w") as log, (
                no_rejection() if not method.reject else contextlib.nullcontext()):
            earlier_folder = run_study(path, earlier, console=Console(file=log, width=120))
        spent = pd.read_csv(earlier_folder / "epochs.csv")
        source = {"fraction": earlier.fraction, "epochs": int((spent.epoch >= 1).sum()),
                  "trials": len(pd.read_csv(earlier_folder / "leaderboard.csv")),
                  "wall_s": round(time.time() - t0, 1)}
        options = dataclasses.replace(options, warm_start=str(earlier_folder))
    t0 = time.time()
    with open(work / f"{name}.log", "w") as log, (
            no_rejection() if not method.reject else contextlib.nullcontext()):
        folder = run_study(path, options, console=Console(file=log, width=120))
    wall = time.time() - t0

    epochs = pd.read_csv(folder / "epochs.csv")
    board = pd.read_csv(folder / "leaderboard.csv")
    meta = json.loads((folder / "study.json").read_text())
    configs = trial_configs(folder)
    events = [(r.t_end, str(r.trial_id), int(r.epoch), float(r.val_acc))
              for r in epochs.itertuples() if r.epoch >= 1]
    return Run(method.name, seed, events, configs,
               {str(r.trial_id): r.status for r in board.itertuples()}, wall, t0,
               # a repeated draw reuses the earlier result (study.json's "duplicates"):
               # hpo never runs one
               rejected=meta.get("rejected", 0), duplicates=0, source=source)


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


def search_ray(method: Method, seed: int, space: Space, data: Dataset, work: Path,
               budget: dict) -> Run:
    """Ray Tune as its docs show it: OptunaSearch over the space's define-by-run sampler
    (Optuna's TPE, hpo's sampler as hpo builds it, or random draws), ASHAScheduler on the
    epoch, the space's trials as function trainables reporting every epoch."""
    import optuna
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if method.sampler:
        from hpo.record import make_sampler

        sampler = make_sampler(method.sampler, seed, space.startup_trials
                               if method.startup is None else method.startup)
    elif method.base == "ray-optuna":
        sampler = optuna.samplers.TPESampler(seed=seed)
    else:
        sampler = optuna.samplers.RandomSampler(seed=seed)

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
            run_config=tune.RunConfig(name=f"{method.name.replace(':', '-')}-seed{seed}",
                                      storage_path=str(work / "ray"),
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
    return Run(method.name, seed, events, configs, statuses, wall, t0,
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
            if spent.over():  # the study ends; pruned, so Optuna logs no failure for it
                study.stop()
                raise optuna.TrialPruned
            if epoch >= 1 and trial.should_prune():
                raise optuna.TrialPruned

        last = run_trial(config, train_only, report, device=device)
        return last.get(space.metric) or 0.0

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.time()
    try:
        study.optimize(objective, n_jobs=max(1, int(budget["cpus"])), timeout=budget["seconds"])
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
            "chosen_trial": trial, **({"source": run.source} if run.source else {})}


def _at(curve: list, epochs: int) -> float:
    """The best validation accuracy so far once `epochs` were spent (a run that stopped on
    the wall-clock cap holds its last value)."""
    value = 0.0
    for spent, best in curve:
        if spent > epochs:
            break
        value = best
    return value


def anytime_mean(curve: list, epoch_budget: int) -> float:
    """The mean of the anytime curve over epochs 1..budget: the area under it, per epoch. It
    rewards reaching a high accuracy early, where the best at the full budget ties."""
    return statistics.fmean(_at(curve, e) for e in range(1, epoch_budget + 1))


def aggregate(runs: list[dict], epoch_budget: int) -> dict:
    """Mean and spread over seeds: of the best validation accuracy at the full budget, of the
    test accuracy, and of the anytime curve at every epoch of the budget."""
    grid = list(range(1, epoch_budget + 1))
    per_seed = [[_at(r["curve"], e) for e in grid] for r in runs]
    vals = [r["best_val"] for r in runs]
    tests = [r["test_acc"] for r in runs if r["test_acc"] is not None]
    # a chosen config that diverged when retrained has no test accuracy: counted, not averaged

    def stats(xs):
        return (statistics.fmean(xs) if xs else None,
                statistics.stdev(xs) if len(xs) > 1 else 0.0)

    areas = [statistics.fmean(c) for c in per_seed]
    return {"best_val_mean": stats(vals)[0], "best_val_std": stats(vals)[1],
            "anytime_mean": stats(areas)[0], "anytime_std": stats(areas)[1],
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


COMPARED = {"best_val": "best val", "test_acc": "test", "anytime_mean": "anytime mean"}


def compare(results: dict[str, list[dict]], a: str, b: str, epoch_budget: int) -> dict:
    """Method `a` against method `b`, paired by seed (bench/paired.py): of the best validation
    accuracy at the full budget, of the test accuracy of the chosen config retrained (a seed
    whose retrain diverged in either is left out of that one), and of the anytime curve's
    mean over the budget."""
    def values(method: str, key: str) -> dict[int, float | None]:
        return {r["seed"]: anytime_mean(r["curve"], epoch_budget) if key == "anytime_mean"
                else r[key] for r in results[method]}

    return {"a": a, "b": b, **{key: paired(values(a, key), values(b, key))
                               for key in COMPARED}}


def print_comparisons(found: list[dict]) -> None:
    if found:
        print("\npaired by seed, A - B: mean [95% t interval] [bootstrap], wins/ties/losses, "
              "sign-test p")
    for c in found:
        cells = []
        for key, label in COMPARED.items():
            x = c[key]
            if not x["n"]:
                cells.append(f"{label}: no seed")
                continue
            t = _interval(x["t_ci"])
            boot = _interval(x["bootstrap_ci"])
            cells.append(f"{label} {x['mean']:+.4f} {t} {boot}, {x['wins']}/{x['ties']}/"
                         f"{x['losses']}, p {x['sign_p']:.3g}")
        print(f"  {c['a']} - {c['b']}: " + "; ".join(cells))


def _interval(ci) -> str:
    return "[-]" if ci is None else f"[{ci[0]:+.4f}, {ci[1]:+.4f}]"


def print_table(methods: dict) -> None:
    print(f"\n{'method':<30} {'best val (full budget)':>22} {'test (retrained)':>18} "
          f"{'trials':>7} {'wasted':>7} {'rejected':>8} {'wall s':>7}")
    for m, f in methods.items():
        print(f"{m:<30} {f['best_val_mean']:>14.4f} ± {f['best_val_std']:.4f} "
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
