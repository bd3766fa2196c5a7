"""bench/features.py runs end to end in a small CPU form and prints its three timings.

No timing is asserted (speed on a shared machine says nothing about the code): only that the
three trials ran, trained alike, and the cached ones took their features from the cache.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_parquet_dataset

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.bench  # three short trials of resnet18 in a new process
def test_features_bench_times_the_uncached_cold_and_warm_trials(tmp_path):
    data = write_parquet_dataset(tmp_path / "data", n_train=60, n_test=0)
    out = tmp_path / "features.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "features.py"), "--small", "--data", str(data),
         "--fraction", "1", "--epochs", "1", "--input-size", "32", "--batch-size", "16",
         "--device", "cpu", "--json", str(out)],
        cwd=REPO, env={**os.environ, "HPO_CACHE": str(tmp_path / "cache")},
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "speedup:" in done.stdout, done.stdout
    figures = json.loads(out.read_text())
    runs = figures["runs"]
    assert [runs[k]["features"] for k in ("uncached", "cached_cold", "cached_warm")] == [
        None, "computed", "cached"]
    assert len({r["val_acc"] for r in runs.values()}) == 1
    assert figures["speedup_warm"] > 0 and figures["backbone"] == "resnet18"
