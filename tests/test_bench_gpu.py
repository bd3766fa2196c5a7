"""bench/gpu.py, the one command for every GPU figure, runs every part in its --dry-run form and
renders every figure it measured; a part that overruns its allowance is recorded as stopped and
rendered as not measured.

Only that it runs and reports: no timing is asserted, since speed on a shared CI machine says
nothing about the code, and the dry run's sizes say nothing about a GPU.
"""
from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# only for this import: bench/ holds modules named common, errors, features, packing
sys.path.insert(0, str(REPO / "bench"))
try:
    import gpu
    import gpu_rows
finally:
    sys.path.remove(str(REPO / "bench"))

pytestmark = pytest.mark.bench


def run_gpu(*args: str, tmp_path: Path, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "HPO_CACHE": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, str(REPO / "bench" / "gpu.py"), *map(str, args)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One whole --dry-run: (its JSON, the rows rendered from it)."""
    tmp = tmp_path_factory.mktemp("gpu_dry")
    out = tmp / "dry.json"
    # every part's dry allowance is a hang guard; together they are DRY_BUDGET_S
    done = run_gpu("--dry-run", "--json", out, "--work", tmp / "work", tmp_path=tmp,
                   timeout=gpu.DRY_BUDGET_S + 120)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = run_gpu("--rows", out, tmp_path=tmp, timeout=60)
    assert rows.returncode == 0, rows.stdout + rows.stderr
    return json.loads(out.read_text()), rows.stdout


def test_dry_run_measures_every_part(dry_run):
    record, _ = dry_run
    assert record["dry_run"] is True and record["commit"]
    assert list(record["parts"]) == list(gpu.ALLOWANCE_S)
    for name, part in record["parts"].items():
        assert part["status"] == "done", (name, part)
        assert part["figures"], name
        assert all(c["status"] == "done" for c in part["commands"]), (name, part["commands"])
    m = record["machine"]
    assert m["cpus"] >= 1 and m["torch"] and m["ray"] and m["optuna"]


def test_rows_hold_every_figure(dry_run):
    record, rows = dry_run
    f = {name: part["figures"] for name, part in record["parts"].items()}
    assert "not measured" not in rows
    # one figure of each row, as the JSON has it, in the rendered section
    expected = [
        f"{f['setup']['data']['seconds']:.1f} s for 500 images",
        f"{f['throughput']['vgg']['engine_img_per_s']:,.0f} img/s",
        f"{f['throughput']['basenet']['engine_img_per_s']:,.0f} img/s",
        f"{f['throughput']['vgg']['ratio']:.1f}× the steady DataLoader",
        f"{f['throughput']['basenet']['ratio']:.1f}× the steady DataLoader",
        f"k=2 {f['packing']['runs'][1]['ratio_to_k1']:.2f}×",
        "k=1: none (CPU)",
        f"in {f['checkpoint']['nets']['too-slow']['checkpoint_s']:.3f} s",
        f"{f['features']['speedup_warm']:.1f}× warm",
        f"{f['study']['busy_fraction']:.0%} (hpo's busy %",
        f"start-up and reporting {f['study']['time']['trial_other_s']:.0f}",
        f"{f['study']['statuses'].get('oom', 0)} trial(s) out of memory",
        f"best val_acc {f['study']['best']['val_acc']:.4f}",
        f"{f['headline']['test_acc']:.2%} after 1 epoch(s)",
        *(f"best val {m['run']['best_val']:.4f}" for m in f["search_quality"]["methods"].values()),
    ]
    for text in expected:
        assert text in rows, text
    assert rows.count("\n| ") == 2 + sum(len(gpu_rows.render_part(n, p, record))
                                         for n, p in record["parts"].items())


def test_a_dry_run_is_not_written_to_benchmarks(dry_run, tmp_path):
    record, _ = dry_run
    (tmp_path / "dry.json").write_text(json.dumps(record))
    before = (REPO / "BENCHMARKS.md").read_text()
    done = run_gpu("--rows", tmp_path / "dry.json", "--write-benchmarks", tmp_path=tmp_path,
                   timeout=60)
    assert done.returncode != 0 and "not written" in done.stderr
    assert (REPO / "BENCHMARKS.md").read_text() == before


def test_a_run_goes_before_the_not_measured_list_once(dry_run, tmp_path):
    record, _ = dry_run
    record = {**record, "dry_run": False}
    page = tmp_path / "BENCHMARKS.md"
    page.write_text(f"# Benchmarks\n\n## earlier\n\n{gpu_rows.NOT_MEASURED} in this session\n")
    gpu_rows.write_benchmarks(record, page)
    gpu_rows.write_benchmarks(record, page)  # the same run again replaces its section
    text = page.read_text()
    assert text.count(f"<!-- bench/gpu.py run {record['started']} -->") == 1
    assert text.index("## earlier") < text.index("every GPU figure") < text.index(
        gpu_rows.NOT_MEASURED)


def test_what_only_a_gpu_run_records_renders_too(dry_run):
    # the branches a CPU cannot reach, fed what a GPU run records there
    record, _ = dry_run
    record = json.loads(json.dumps(record))
    record["machine"].update(gpu="NVIDIA H100 80GB HBM3", gpu_memory_gib=79.2, driver="580")
    parts = record["parts"]
    for run in parts["packing"]["figures"]["runs"]:
        run["peak_mib"] = [1234.5] * run["k"]
    parts["study"]["figures"].update(
        packing_line="GPU memory 79 GiB; measured 7 configs (up to 3.1 GiB each): 7 at 4 per GPU",
        trial_gpu_peak_gib=3.05, gpu_sampled={"util_mean_pct": 87.3, "samples": 180,
                                              "window": "the search", "mem_used_max_mib": 14000,
                                              "mem_total_mib": 81559})
    section = gpu_rows.render_section(record)
    assert "not rendered" not in section and "not measured" not in section
    for text in ("NVIDIA H100 80GB HBM3 (79.2 GiB, driver 580)", "k=2: 1,234 1,234 MiB",
                 "7 at 4 per GPU; largest trial peak 3.05 GiB; at most 14,000 of 81,559 MiB",
                 "utilization.gpu (a kernel running, not SM occupancy) 87% on average over "
                 "the search (180 samples)", "-lms 500` beside it"):
        assert text in section, text


def test_a_part_past_its_allowance_is_stopped_and_not_measured(tmp_path):
    # 10 s for a search: Ray alone takes longer to start, so it is stopped
    out = tmp_path / "short.json"
    done = run_gpu("--dry-run", "--parts", "study", "--allowance", "study=10", "--json", out,
                   "--work", tmp_path / "work", tmp_path=tmp_path, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    parts = json.loads(out.read_text())["parts"]
    assert parts["setup"]["status"] == "done"
    assert parts["study"]["status"] == "overran", parts["study"]
    assert parts["study"]["wall_s"] < 10 + 5  # its SIGKILL comes at the allowance's end
    assert parts["packing"] == {"status": "skipped", "why": "not among --parts"}
    rows = run_gpu("--rows", out, tmp_path=tmp_path, timeout=60).stdout
    assert ("| GPU busy % over a 64-trial study | not measured (stopped at the part's 10 s "
            "allowance) |") in rows
    assert "| single-trial img/s, BaseNet | not measured (not among --parts) |" in rows


def test_gpu_sampler_averages_over_the_search_and_keeps_the_peak_memory(tmp_path):
    # what `nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,memory.total
    # --format=csv,noheader,nounits` prints, its last line cut short by the stop
    (tmp_path / "smi.csv").write_text(
        "2026/12/06 10:00:00.000, 0, 500, 81559\n2026/12/06 10:00:01.000, 80, 20000, 81559\n"
        "2026/12/06 10:00:02.500, 100, 30000, 81559\n2026/12/06 10:00:05.000, 0, 900, 81559\n"
        "2026/12/06 10:00:0")
    sampler = gpu.GpuSampler(tmp_path / "smi.csv")
    sampler.proc = True  # as if nvidia-smi had run
    at = lambda s: datetime.datetime(2026, 12, 6, 10, 0, s).timestamp()  # noqa: E731
    assert sampler.summarise(at(1), at(2)) == {
        "util_mean_pct": 90.0, "samples": 2, "window": "the search",
        "mem_used_max_mib": 30000.0, "mem_total_mib": 81559.0}
    assert sampler.summarise(None, None)["window"] == "the whole command"
