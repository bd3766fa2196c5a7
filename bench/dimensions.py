"""Which choices of a space's dimensions reach the top of their searches: the evidence for
narrowing a space file.

Reads every search in a bench/search_quality.py work folder (hpo's studies and Ray Tune's
experiments; Optuna-alone runs keep nothing on disk), ranks each trial within its own search
by its best validation accuracy, and prints, for every value of every choice dimension: how
many trials drew it, and how many of those were in their search's top quarter.

    python bench/dimensions.py WORK [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

TOP = 0.25
# the keys that are not a dimension of the space
SKIP = {"trial", "point", "seed", "epochs"}


def searches(work: Path) -> list[list[tuple[dict, float]]]:
    """Every search under `work` as its trials' (config, best validation accuracy)."""
    found = []
    for study in sorted((work / "hpo").glob("*/study.db")):
        found.append(_hpo(study.parent))
    for experiment in sorted((work / "ray").glob("*")):
        trials = [_ray_trial(t) for t in sorted(experiment.glob("*/params.json"))]
        found.append([t for t in trials if t])
    return [s for s in found if s]


def trial_configs(folder: Path) -> dict[str, dict]:
    """An hpo study's complete config of every trial, by trial id, from its record."""
    from hpo.record import Record

    record = Record.load(f"sqlite:///{folder.resolve()}/study.db", folder.name)
    return {str(t.number): t.config for t in record.real()}


def _hpo(folder: Path) -> list[tuple[dict, float]]:
    import pandas as pd

    configs = trial_configs(folder)
    board = pd.read_csv(folder / "leaderboard.csv", dtype={"trial_id": str})
    return [(configs[r.trial_id], float(r.val_acc if math.isfinite(r.val_acc) else 0.0))
            for r in board.itertuples() if r.trial_id in configs]


def _ray_trial(params: Path) -> tuple[dict, float] | None:
    results = [json.loads(line) for line in
               (params.parent / "result.json").read_text().splitlines() if line.strip()]
    if not results or results[-1].get("status") == "infeasible":
        return None  # never trained: hpo would not have run it (a count, not a rank)
    accs = [r.get("val_acc") for r in results]
    accs = [a for a in accs if a is not None and math.isfinite(a)]
    return (json.loads(params.read_text()), max(accs)) if accs else None


def tally(found: list[list[tuple[dict, float]]]) -> dict[str, dict[str, list[int]]]:
    """dimension -> value -> [trials that drew it, of which in their search's top quarter]."""
    counts: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    seen = set()
    for trials in found:
        ranked = sorted(trials, key=lambda t: -t[1])
        top = max(1, round(len(ranked) * TOP))
        for i, (config, _) in enumerate(ranked):
            key = json.dumps({k: v for k, v in config.items() if k not in SKIP}, sort_keys=True)
            if config.get("point") or key in seen:
                # a starting point is ranked but not a draw of the space; a config drawn by
                # two searches (Ray's TPE and random search start from the same random
                # draws for a seed) counts once
                continue
            seen.add(key)
            for key, value in config.items():
                if key in SKIP or isinstance(value, float):
                    continue  # continuous dimensions: a histogram, not a table
                c = counts[key][json.dumps(value)]
                c[0] += 1
                c[1] += i < top
    return counts


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("work", type=Path, help="bench/search_quality.py's --work folder")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    found = searches(args.work)
    counts = tally(found)
    print(f"{sum(map(len, found))} trials in {len(found)} searches; for each value: drawn "
          f"configs in their search's top quarter / drawn configs (starting points and repeats "
          f"not counted)")
    for key, values in sorted(counts.items()):
        if len(values) < 2:
            continue  # a constant of the space
        cells = ", ".join(f"{v} {top}/{n}" for v, (n, top) in
                          sorted(values.items(), key=lambda kv: -kv[1][0]))
        print(f"  {key:<18} {cells}")
    if args.json:
        Path(args.json).write_text(json.dumps(counts, indent=1) + "\n")


if __name__ == "__main__":
    main()
