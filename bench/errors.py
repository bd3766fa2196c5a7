"""How long a mistake costs: `hpo --help` and every bad invocation of tests/mistakes.py's table
(the docs' troubleshooting page), each timed as a fresh process, the median of `--repeats`.

It first makes what the table runs against: a small generated dataset and a finished study of
tests/spaces/tiny.py (about a minute), in a temporary folder.

    python bench/errors.py --json errors.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, provenance

sys.path.insert(0, str(REPO / "tests"))
from mistakes import MISTAKES, Made  # noqa: E402

from conftest import TINY, write_parquet_dataset  # noqa: E402


def run(args, cwd) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "hpo.cli", *map(str, args)], cwd=cwd,
                         capture_output=True, text=True)
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    import torch

    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["HPO_CACHE"] = str(tmp / "cache")
        data = write_parquet_dataset(tmp / "tiny")
        _, made = run(["search", TINY, "--data", data, "--num-cpus", 2], tmp)
        if made.returncode:
            sys.exit(f"could not make the study: {made.stderr[-2000:]}")
        (tmp / "cases").mkdir()
        rows = []
        files = Made(tmp / "cases", data)
        for argv in [["--help"]] + [m.args(files) for m in MISTAKES]:
            times = []
            for _ in range(args.repeats):
                seconds, out = run(argv, tmp)
                times.append(seconds)
            shown = " ".join(str(a).replace(str(tmp) + "/", "") for a in argv)
            rows.append({"command": f"hpo {shown}", "exit": out.returncode,
                         "median_s": round(statistics.median(times), 3),
                         "max_s": round(max(times), 3)})
            print(f"{rows[-1]['median_s']:6.2f} s  exit {out.returncode}  {rows[-1]['command']}",
                  flush=True)
    worst = max(rows, key=lambda r: r["median_s"])
    print(f"slowest: {worst['median_s']} s ({worst['command']}); "
          f"{sum(r['median_s'] < 1 for r in rows)} of {len(rows)} under 1 s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**provenance(torch.device("cpu"), load), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
