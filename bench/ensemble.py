"""Which ensemble tests better: a finished study's top K configs, or its best config K times?

Both are retrained as `hpo train --ensemble K` retrains them (hpo.final.retrain_ensemble:
train+val, full epochs, each member tested once and the mean of their probabilities once):

  (a) configs: the top K completed configs in leaderboard order, each with seed r;
  (b) seeds:   the best config (best.json) with seeds r*K .. r*K+K-1;

for each repeat r = 0, 1, ... (--repeats). The single best config's retrain, what plain
`hpo train` tests, is (b)'s first member (the best config with seed r*K): no third training.
Nothing is written into the study; members' weights go to a temporary folder (or --out).

    python bench/ensemble.py results/cifar10 --k 3 --json ensemble.json
    python bench/ensemble.py results/cifar10 --k 3 --repeats 3 --json ensemble.json
    python bench/ensemble.py results/tiny --small    # K 2, 1 epoch: that it runs, in a minute
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from io import StringIO
from pathlib import Path

import torch
from common import fill_defaults, provenance
from rich.console import Console

from hpo.config import read_config
from hpo.final import retrain_ensemble, top_configs
from hpo.folder import StudyFolder
from hpo.study import load_study_data, read_meta


def members(study: Path, k: int, of: str, repeat: int, epochs: int | None) -> list:
    """(trial id, config) of the members of repeat `repeat` of an ensemble of `of`."""
    if of == "configs":
        chosen = top_configs(study, k, seed=repeat)
    else:
        best = read_config(StudyFolder(study).best_config)
        trial = (read_meta(study).get("best") or {}).get("trial_id")
        chosen = [(trial, {**best, "seed": repeat * k + s}) for s in range(k)]
    return [(t, {**c, "epochs": epochs or c["epochs"]}) for t, c in chosen]


def run(study: Path, k: int, repeats: int, epochs: int | None, data: str | None,
        fraction: float | None, out: Path, console: Console) -> dict:
    _, dataset = load_study_data(study, data, fraction)
    ways: dict[str, list[dict]] = {"configs": [], "seeds": []}
    for r in range(repeats):
        for of in ways:
            s = retrain_ensemble(members(study, k, of, r, epochs), of, dataset,
                                 out / f"{of}-{r}", console)
            ways[of].append({"ensemble_acc": s["test_acc"], "ensemble_loss": s["test_loss"],
                             "members": [{"trial_id": m["trial_id"], "seed": m["seed"],
                                          "test_acc": m["test_acc"]} for m in s["members"]],
                             "members_mean": s["members_mean"],
                             "members_best": s["members_best"]})
    single = [w["members"][0]["test_acc"] for w in ways["seeds"]]
    return {"study": str(study), "k": k, "repeats": repeats, "epochs": epochs,
            "test_images": len(dataset.y_test), **ways,
            "single": [{"seed": w["members"][0]["seed"], "test_acc": a}
                       for w, a in zip(ways["seeds"], single)],
            "mean": {"configs": statistics.fmean(w["ensemble_acc"] for w in ways["configs"]),
                     "seeds": statistics.fmean(w["ensemble_acc"] for w in ways["seeds"]),
                     "single": statistics.fmean(single)}}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("study", type=Path, help="a finished study folder, results/<study>")
    p.add_argument("--k", type=int, help="members per ensemble (default 3)")
    p.add_argument("--repeats", type=int, default=1,
                   help="ensembles of each kind, each with other seeds (default 1)")
    p.add_argument("--epochs", type=int, help="train this many epochs instead of each "
                   "config's (a quick look; the figures then say little)")
    p.add_argument("--data", help="the study's images, when moved")
    p.add_argument("--fraction", type=float, help="of the training images (default: the "
                   "study's)")
    p.add_argument("--out", type=Path, help="keep the members' weights here (default: a "
                   "temporary folder, deleted)")
    p.add_argument("--verbose", action="store_true", help="show each member's progress")
    p.add_argument("--small", action="store_true", help="K 2 and 1 epoch, for the test suite")
    p.add_argument("--json", metavar="PATH", help="also write the figures here as JSON")
    args = p.parse_args(argv)
    fill_defaults(args, small={"k": 2, "epochs": 1}, full={"k": 3})
    load_before = os.getloadavg()[0]
    console = Console() if args.verbose else Console(file=StringIO())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory(prefix="hpo-bench-ensemble-") as work:
        figures = run(args.study, args.k, args.repeats, args.epochs, args.data, args.fraction,
                      args.out or Path(work), console)
    out = {**provenance(device, load_before), **figures}
    print(f"machine:  {out['machine']}; 1-min load average {load_before:.1f} before, "
          f"{out['load_avg_1m'][1]:.1f} after; torch {out['torch']}")
    print(f"{args.study}: K={args.k}, {args.repeats} repeat(s), {out['test_images']:,} test "
          "images")
    for of in ("configs", "seeds"):
        for r, w in enumerate(out[of]):
            accs = ", ".join(f"{m['test_acc']:.4f}" for m in w["members"])
            print(f"  {of:<8} repeat {r}: ensemble {w['ensemble_acc']:.4f}; members {accs} "
                  f"(mean {w['members_mean']:.4f}, best {w['members_best']:.4f})")
    m = out["mean"]
    print(f"mean test accuracy: configs {m['configs']:.4f}, seeds {m['seeds']:.4f}, the single "
          f"best config {m['single']:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
