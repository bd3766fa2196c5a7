"""How long `hpo leaderboard STUDY` keeps a user waiting: each invocation a fresh process (the
imports are most of it), --repeats of them, the min and the median; and which heavy packages
one invocation imported.

    python bench/leaderboard.py results/tiny --repeats 10 --json leaderboard.json

Run it from the root of the checkout to measure: `python -m hpo.cli` imports the hpo of the
folder it starts in, ahead of PYTHONPATH and of an installed one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HEAVY = ("pandas", "numpy", "torch", "ray", "optuna", "matplotlib", "pyarrow")


def run(args: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "hpo.cli", *args], capture_output=True,
                         text=True)
    return time.perf_counter() - t0, out


def heavy_imports(args: list[str]) -> list[str]:
    """The packages of HEAVY that one invocation imports (python -X importtime's lines)."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "hpo.cli", *args],
                         capture_output=True, text=True)
    names = {line.rsplit("|", 1)[-1].strip().split(".")[0]
             for line in out.stderr.splitlines() if line.startswith("import time:")}
    return sorted(names & set(HEAVY))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", help="a finished study folder")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    rows = []
    for argv in (["leaderboard", args.study], ["leaderboard", args.study, "--csv"]):
        run(argv)  # untimed: the files and the interpreter in the page cache, as a user's
        times = []
        for _ in range(args.repeats):
            seconds, out = run(argv)
            if out.returncode:
                sys.exit(f"hpo {' '.join(argv)} failed: {out.stderr[-2000:]}")
            times.append(seconds)
        rows.append({"command": f"hpo {' '.join(argv)}", "repeats": args.repeats,
                     "min_s": round(min(times), 3),
                     "median_s": round(statistics.median(times), 3),
                     "max_s": round(max(times), 3), "imports": heavy_imports(argv)})
        r = rows[-1]
        print(f"min {r['min_s']:.2f} s  median {r['median_s']:.2f} s  max {r['max_s']:.2f} s  "
              f"imports {', '.join(r['imports']) or 'none of ' + '/'.join(HEAVY)}  "
              f"{r['command']}", flush=True)
    print(f"load average (1 min): {load:.2f} before, {os.getloadavg()[0]:.2f} after")
    if args.json:
        import torch  # only for the provenance every bench/ figure carries
        from common import provenance

        with open(args.json, "w") as f:
            json.dump({**provenance(torch.device("cpu"), load), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
