"""Every figure BENCHMARKS.md lists as "not measured" on a GPU, in one command of 9 minutes.

    python bench/gpu.py --data .data/cifar10 --json gpu.json    # one GPU, at most 9 minutes
    python bench/gpu.py --dry-run --json dry.json              # the same steps, CPU, tiny sizes
    python bench/gpu.py --rows gpu.json [--write-benchmarks]   # BENCHMARKS.md's rows from it
    python bench/gpu.py --check [--data DIR]                   # prerequisites and the machine

Each part runs the bench script or hpo command that measures its figures, as it would run by
hand, in a session of its own. A part that overruns its allowance is stopped (SIGTERM,
which a search answers by saving what it has, then SIGKILL: its Ray, DataLoader workers and
packed trials go with it); the JSON says so and the next part starts. The JSON is rewritten
after every part, so a run killed from outside keeps whatever finished. No figure is ever
estimated: a part that did not run renders as "not measured (why)".

  part            allowance  what runs on the GPU (all of CIFAR-10 unless said)
  setup              30 s    the prerequisites, the machine; CIFAR-10 decoded into $HPO_CACHE
  throughput         45 s    bench/throughput.py --net vgg, then --net basenet (batch 512,
                             8 DataLoader workers)
  packing            50 s    bench/packing.py --k 1 2 4 (VGG, 3 epochs per trial)
  checkpoint         35 s    bench/checkpoint.py (the three starting points, one epoch each)
  features           50 s    bench/features.py --fraction 0.4 --epochs 3 (resnet50, 224 px:
                             sized down from 10 epochs of all of it)
  study             140 s    hpo search spaces/cifar10.py --trials 64 --max-epochs 2
                             --grace-period 1 --fraction 0.25 --time-budget <what is left>,
                             nvidia-smi sampling the GPU meanwhile
  headline           75 s    hpo train <that study> --seeds 1 --fraction 1 --epochs N, N as
                             many as its speed in the study lets fit (at most 30)
  search_quality    115 s    bench/search_quality.py --full --gpus 0.25 sized down: 1 seed,
                             10% of the data, 2-epoch trials, a time cap per search from what
                             is left
  total             540 s

A part gets its allowance or what is left of the 540 s, whichever is less, and is skipped with
under 10 s. --dry-run runs every part on generated images (400 + 100) with tests/spaces/tiny.py
and CPU sizes, under allowances of its own that are generous for a loaded 2-core machine.

On a GPU lent through the device tool (Python 3.12 with torch, torchvision, pandas, pyarrow and
rich, but no Ray or Optuna, and no package registry), spend the lease measuring:

  1. Here, once (the kit is ~48 MB, the data 55 MB; a call carries at most 64 MiB, so two):
       EXTRA_PKGS='optuna<5.1' ../shared/tools/build-device-kit   # .devkit/site.tar.xz, ~4 min
       mkdir -p .data/cifar10 && cp ../shared/datasets/cifar10/*.parquet .data/cifar10/
       git rev-parse --short HEAD                                  # commit first: <sha>
     (In a git worktree, where .git is a file, the kit tool stops at its .git/info/exclude
     step: run it in a scratch folder, `d=$(mktemp -d); mkdir $d/.git; (cd $d && EXTRA_PKGS=...
     <repo>/../shared/tools/build-device-kit); mkdir -p .devkit; mv $d/.devkit/site.tar.xz
     .devkit/`.)
  2. Call 1, carry [".devkit"], timeout_s 180:
       mkdir -p /tmp/site && tar -xJf .devkit/site.tar.xz -C /tmp/site &&
       PYTHONPATH=/tmp/site:$PWD python3 bench/gpu.py --check
  3. Call 2 AT ONCE (the machine stays warm only ~30 s, and /tmp/site lives on it; a fresh
     machine fails the check in one line), carry [".data"], timeout_s 600:
       PYTHONPATH=/tmp/site:$PWD python3 bench/gpu.py --data .data/cifar10 --commit <sha>
       --json $OUT/gpu.json
     $OUT/gpu.json, gpu.log (every command's output), gpu-nvidia-smi.csv (the study's
     samples) and gpu-sq.png (search quality's curves) come back.
  4. Here: python bench/gpu.py --rows <files_at>/gpu.json --write-benchmarks
"""

from __future__ import annotations

import argparse
import csv
import datetime
import importlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from importlib import metadata
from pathlib import Path

from gpu_rows import STUDY_TRIALS, render_part, render_section, write_benchmarks

REPO = Path(__file__).resolve().parent.parent
# 9 of a lease's 15 minutes: the machine's start, the call that brings the kit and the idle
# tail need most of the rest, and one command may run 10 minutes at most
BUDGET_S = 540
# seconds per part, in the order they run: the cheap, most-asked-for figures first, so an
# overrun late in the run costs the least
ALLOWANCE_S = {"setup": 30, "throughput": 45, "packing": 50, "checkpoint": 35, "features": 50,
               "study": 140, "headline": 75, "search_quality": 115}
assert sum(ALLOWANCE_S.values()) <= BUDGET_S
# --dry-run: the same parts on a 2-core CPU shared with test suites, where Ray alone takes
# 5-15 s to start; the limits only catch a hang
DRY_ALLOWANCE_S = {"setup": 90, "throughput": 120, "packing": 150, "checkpoint": 90,
                   "features": 120, "study": 180, "headline": 90, "search_quality": 300}
DRY_BUDGET_S = 1200
MIN_PART_S = 10  # less than this left: a part could not even import torch


KIT_HINT = (" (unpack .devkit/site.tar.xz into /tmp/site and put /tmp/site first on "
            "PYTHONPATH: bench/gpu.py --help says how)")
DATA_HINT = (" (on a device machine: copy ../shared/datasets/cifar10/*.parquet into "
             ".data/cifar10 here and carry .data)")


def fail(message: str):
    sys.exit(f"bench/gpu.py: {message}")


# ---------------------------------------------------------------------------------------------
# --check: run in a process of its own, so that the driver never holds a CUDA context


def check(data: str | None, dry: bool) -> dict:
    """Import what the parts import, look at the GPU and decode the data; fail in one line
    when something is missing. Returns the machine and the data as the JSON records them."""
    sys.path.insert(0, str(REPO))  # this checkout's hpo, whatever else is installed
    found = {}
    for name in ("torch", "torchvision", "ray", "optuna", "pandas", "pyarrow", "rich", "PIL"):
        try:
            module = importlib.import_module(name)
            found[name] = getattr(module, "__version__", None) or metadata.version(name)
        except ImportError as exc:
            fail(f"{name} is not importable: {exc}"
                 + (KIT_HINT if name in ("ray", "optuna") else ""))
    try:  # what a search imports beyond them: Ray Tune, hpo's own driver
        importlib.import_module("hpo.tuning.driver")
    except ImportError as exc:
        fail(f"hpo's search does not import: {exc} (is the repository on PYTHONPATH?)")
    try:
        found["matplotlib"] = importlib.import_module("matplotlib").__version__
    except ImportError:
        found["matplotlib"] = None  # only search quality's curves need it
    import torch
    from common import cpu_model

    machine = {"python": sys.version.split()[0], **found, "cuda": torch.version.cuda,
               "cpus": len(os.sched_getaffinity(0)), "cpu": cpu_model(),
               "memory_gib": _read_host_memory_gib(), "gpu": None,
               "outside_pins": _find_unpinned(found)}
    for text in machine["outside_pins"]:
        print(f"warning: {text}: the figures are of these versions, not the pinned ones")
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        machine.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                       gpus=torch.cuda.device_count(), driver=_query_nvidia_smi("driver_version"))
    elif not dry:
        fail(f"no CUDA device: torch {torch.__version__} sees none (--dry-run runs on the CPU)")
    out = {"machine": machine}
    if data:
        if not Path(data).is_dir():
            fail(f"no data folder {data}{DATA_HINT}")
        from hpo.data import decode_count, load_dataset

        t0 = time.perf_counter()
        d = load_dataset(data)
        out["data"] = {"path": data, "seconds": round(time.perf_counter() - t0, 2),
                       "decoded": decode_count(), "train": len(d.y_train), "val": len(d.y_val),
                       "test": 0 if d.y_test is None else len(d.y_test)}
    return out


def _find_unpinned(versions: dict[str, str | None]) -> list[str]:
    """The packages whose version is outside pyproject.toml's range (a device kit built
    without EXTRA_PKGS='optuna<5.1' brings the newest Optuna, whose samplers differ)."""
    try:
        import tomllib
        from packaging.requirements import Requirement
    except ImportError:
        return []
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {"pillow": "PIL"}
    out = []
    for dep in map(Requirement, deps):
        version = versions.get(names.get(dep.name, dep.name))
        if version and not dep.specifier.contains(version.split("+")[0], prereleases=True):
            out.append(f"{dep.name} {version} is outside pyproject.toml's {dep.specifier}")
    return out


def _read_host_memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            kib = next(int(ln.split()[1]) for ln in f if ln.startswith("MemTotal"))
        return round(kib / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        return None


def _query_nvidia_smi(field: str) -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.splitlines()[0].strip() if out.returncode == 0 else None
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return None


# ---------------------------------------------------------------------------------------------
# the run: parts, each a few commands under one allowance


class Part:
    """One part's commands under its time limit, and what the JSON records of them."""

    def __init__(self, name: str, record: dict, limit: float, run: Run):
        self.name, self.record, self.limit, self.run = name, record, limit, run
        self.t0 = time.monotonic()
        self.figures = record.setdefault("figures", {})
        self.commands = record.setdefault("commands", [])

    @property
    def dry(self) -> bool:
        return self.run.dry

    @property
    def work(self) -> Path:
        return self.run.work

    def seconds_left(self) -> float:
        return self.limit - (time.monotonic() - self.t0)

    def run_script(self, key: str, script: str, *args) -> bool:
        return self.run_command(key, ["bench/" + script, "--data", self.run.data, *args])

    def run_hpo(self, key: str, *args, grace: float = 5.0) -> bool:
        return self.run_command(key, ["-m", "hpo.cli", *args], grace)

    def run_command(self, key: str, args: list, grace: float = 5.0) -> bool:
        """Run `python args...` in what is left of this part's allowance (SIGTERM `grace`
        seconds before its end, then SIGKILL) and record it; whether it exited 0 in time."""
        argv = [sys.executable, *map(str, args)]
        entry = {"key": key, "command": self.run.show(argv)}
        self.commands.append(entry)
        left = self.seconds_left()
        if left < MIN_PART_S / 2:
            entry.update(status="not run", why=f"the part's {self.limit:.0f} s were spent")
            return False
        log = self.run.logs / f"{self.name}-{key}.log"
        t0 = time.monotonic()
        with open(log, "w") as out:
            # a session of its own: the whole tree (Ray, workers, packed trials) is stopped
            # together, and nothing of it outlives the part onto the next part's GPU
            proc = subprocess.Popen(argv, cwd=REPO, env=self.run.env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            grace = min(grace, left / 2)  # the SIGKILL comes at the allowance's end
            overran = _wait_or_stop(proc, left - grace, grace)
        entry.update(rc=proc.returncode, wall_s=round(time.monotonic() - t0, 1))
        self.run.append_log(self.name, key, entry, log)
        if overran:
            entry.update(status="overran", why=f"stopped at the part's {self.limit:.0f} s "
                         "allowance")
        elif proc.returncode != 0:
            entry.update(status="failed", why=f"exit {proc.returncode}: {_read_last_line(log)}")
        else:
            entry["status"] = "done"
        return entry["status"] == "done"

    def read_output(self, key: str) -> str:
        path = self.run.logs / f"{self.name}-{key}.log"
        return path.read_text(errors="replace") if path.is_file() else ""


def _wait_or_stop(proc: subprocess.Popen, seconds: float, grace: float) -> bool:
    """Wait for `proc`; past `seconds`, SIGTERM it (a search then saves what it has), and
    SIGKILL its whole session `grace` seconds later. Whether it had to be stopped."""
    try:
        proc.wait(seconds)
        return False
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            _kill_session(proc.pid)
            proc.wait()
        return True
    finally:
        # what it left behind (Ray's daemons and workers, DataLoader workers, packed trials,
        # each maybe in a process group of its own); all of it when this process is
        # interrupted, as Ctrl-C reaches no process of another session
        _kill_session(proc.pid)


def _kill_session(sid: int) -> None:
    """SIGKILL every process of the session `sid` (one that run_command started)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # the fields after the command's name, which may hold spaces and parentheses:
            # state, ppid, pgrp, session
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid:
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile, or not ours to read


def _read_last_line(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no output"


class Run:
    """The whole run: where things go, the clock, and the JSON rewritten after every part."""

    def __init__(self, args, work: Path):
        self.dry, self.work, self.json = args.dry_run, work, Path(args.json)
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.log = Path(args.log or self.json.with_suffix(".log"))
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.log.write_text("")
        self.budget = DRY_BUDGET_S if self.dry else BUDGET_S
        self.allowance = {**(DRY_ALLOWANCE_S if self.dry else ALLOWANCE_S), **args.allowance}
        self.t0 = time.monotonic()
        # rich's consoles wrap at 80 columns when not on a terminal: the lines parsed below
        # must stay whole
        self.env = {**os.environ, "COLUMNS": "240", "PYTHONUNBUFFERED": "1",
                    # this checkout's hpo, whatever else the interpreter has installed
                    "PYTHONPATH": os.pathsep.join(filter(None, [
                        str(REPO), os.environ.get("PYTHONPATH")]))}
        if self.dry:
            self.env["HPO_CACHE"] = str(work / "cache")
            self.data = str(work / "data")
        else:
            self.data = args.data
        self.record = {
            "dry_run": self.dry, "command": self.show([sys.executable, *sys.argv]),
            "date": datetime.date.today().isoformat(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"),
            "commit": _read_commit() or args.commit, "work": str(work), "data": self.data,
            "budget_s": self.budget, "allowance_s": self.allowance,
            "parts": {name: {"status": "pending"} for name in self.allowance}}

    def show(self, argv: list[str]) -> str:
        """A command as a person would type it: `python`, paths relative to the repository,
        the scratch folder as <work>."""
        def word(arg) -> str:
            text = "python" if arg == sys.executable else str(arg)
            for folder, shown in ((self.work, "<work>"), (REPO, "."), (REPO.parent, "..")):
                if text == str(folder) or text.startswith(f"{folder}/"):
                    return shown + text[len(str(folder)):]
            return text if text and " " not in text else repr(text)

        return " ".join(word(a) for a in argv).replace(" ./", " ")

    def seconds_left(self) -> float:
        return self.budget - (time.monotonic() - self.t0)

    def save(self) -> None:
        self.record["wall_s"] = round(time.monotonic() - self.t0, 1)
        tmp = self.json.with_name(self.json.name + ".tmp")
        tmp.write_text(json.dumps(self.record, indent=1) + "\n")
        os.replace(tmp, self.json)  # a kill mid-write leaves the last whole file

    def append_log(self, part: str, key: str, entry: dict, log: Path) -> None:
        with open(self.log, "a") as out:
            out.write(f"==== {part} / {key}: {entry['command']} (exit {entry['rc']}, "
                      f"{entry['wall_s']} s)\n{log.read_text(errors='replace')}\n")

    def run_part(self, name: str, measure) -> None:
        record = self.record["parts"][name]
        allowance = self.allowance[name]
        limit = min(allowance, self.seconds_left())
        record.update(allowance_s=allowance, limit_s=round(limit, 1))
        if limit < MIN_PART_S:
            record.update(status="skipped", why=f"{max(0, self.seconds_left()):.0f} s were "
                          f"left of the {self.budget} s budget")
            self.save()
            return
        record["status"] = "running"  # what a kill from outside leaves
        self.save()
        part = Part(name, record, limit, self)
        t0 = time.monotonic()
        try:
            why = measure(part)
        except Exception as exc:  # a slip in reading one part's figures costs that part only
            why = None
            part.commands.append({"key": "bench/gpu.py", "command": "bench/gpu.py",
                                  "status": "failed", "why": f"{type(exc).__name__}: {exc}"})
        record["wall_s"] = round(time.monotonic() - t0, 1)
        ended = [c for c in part.commands if c["status"] != "done"]
        if why:
            record.update(status="skipped", why=why)
        elif ended:
            worst = next((c for c in ended if c["status"] == "overran"), ended[0])
            record.update(status=worst["status"], why=f"{worst['key']}: {worst['why']}")
        else:
            record["status"] = "done"
        self.save()

    def print_part(self, name: str) -> None:
        record = self.record["parts"][name]
        print(f"{name}: {record['status']} in {record.get('wall_s', 0):.0f} s of "
              f"{record.get('limit_s', 0):.0f}"
              + (f" ({record['why']})" if record.get("why") else ""), flush=True)
        for row in render_part(name, record, self.record):
            print(f"  {row[0]}: {row[1]}", flush=True)


def _read_commit() -> str | None:
    """HEAD here, marked when the working tree differs from it; None without git (a device
    machine gets the tree without .git: pass --commit)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                              capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


# ---------------------------------------------------------------------------------------------
# the parts: each runs its commands and keeps their figures; a returned string skips it


def measure_setup(p: Part) -> None:
    out = p.work / "setup.json"
    me = Path(__file__).resolve().relative_to(REPO)
    if p.run_command("check", [me, "--check", "--data", p.run.data, "--json", out,
                               *(["--dry-run"] if p.dry else [])]):
        found = json.loads(out.read_text())
        p.run.record["machine"] = found["machine"]
        p.figures["data"] = found["data"]


def measure_throughput(p: Part) -> None:
    for net in ("vgg", "basenet"):
        out = p.work / f"throughput-{net}.json"
        # VGG is slow on a CPU: 36 images in batches of 16, two steps a path
        small = ["--small", "--device", "cpu", "--fraction", "0.1" if net == "vgg" else "1",
                 "--batch-size", "16" if net == "vgg" else "64"]
        if p.run_script(net, "throughput.py", "--net", net, *(small if p.dry else []),
                        "--json", out):
            p.figures[net] = json.loads(out.read_text())


def measure_packing(p: Part) -> None:
    out = p.work / "packing.json"
    # on the CPU BaseNet: k processes of VGG on 2 cores take a minute and show nothing more
    sizes = (["--small", "--device", "cpu", "--net", "basenet", "--fraction", "0.2",
              "--batch-size", "16"] if p.dry else ["--k", "1", "2", "4"])
    if p.run_script("k", "packing.py", *sizes, "--json", out):
        p.figures.update(json.loads(out.read_text()))


def measure_checkpoint(p: Part) -> None:
    out = p.work / "checkpoint.json"
    sizes = ["--small", "--space", "tests/spaces/tiny.py"] if p.dry else []
    if p.run_script("nets", "checkpoint.py", *sizes, "--json", out):
        p.figures.update(json.loads(out.read_text()))


def measure_features(p: Part) -> None:
    out = p.work / "features.json"
    sizes = (["--small", "--device", "cpu", "--fraction", "0.2", "--epochs", "1",
              "--input-size", "32", "--batch-size", "16"] if p.dry
             else ["--fraction", "0.4", "--epochs", "3"])
    if p.run_script("trials", "features.py", *sizes, "--json", out):
        p.figures.update(json.loads(out.read_text()))


def measure_study(p: Part) -> None:
    results = p.work / "results"
    space = "tests/spaces/tiny.py" if p.dry else "spaces/cifar10.py"
    sizes = (["--trials", "3", "--max-epochs", "1", "--grace-period", "1", "--fraction", "1"]
             if p.dry else ["--trials", str(STUDY_TRIALS), "--max-epochs", "2",
                            "--grace-period", "1", "--fraction", "0.25"])
    # the search's own budget ends it before the SIGTERM `grace` s ahead of the part's end
    # would: it counts from after the start (imports, data, Ray, the GPU probe) and is
    # followed by Ray's shut-down and the study's files, 45 s for those
    grace = 20
    minutes = max(0.25, (p.seconds_left() - grace - 45) / 60)
    samples = p.run.json.with_name(p.run.json.stem + "-nvidia-smi.csv")  # beside the JSON
    with GpuSampler(samples) as sampler:
        p.run_hpo("search", "search", space, "--data", p.run.data, *sizes, "--name", "study",
                  "--results", results, "--time-budget", f"{minutes:.2f}", grace=grace)
    folder = results / "study"
    if not (folder / "study.json").is_file():
        return
    meta = json.loads((folder / "study.json").read_text())
    if "time" not in meta:  # killed before the search's end wrote what it measured
        return
    with open(folder / "leaderboard.csv", newline="") as f:
        statuses = Counter(row["status"] for row in csv.DictReader(f))
    out = p.read_output("search")
    run = meta["runs"][-1]
    p.figures.update(
        space=space, fraction=meta["options"]["fraction"], max_epochs=meta["options"][
            "max_epochs"], trials_asked=meta["trials"], trials=sum(statuses.values()),
        statuses=dict(statuses), busy_fraction=meta.get("busy_fraction"),
        time=meta.get("time"), wall_s=meta.get("wall_s"), rejected=meta.get("rejected"),
        duplicates=meta.get("duplicates"), best=meta.get("best"),
        stopped_by=run.get("stopped_by"),
        packing_line=_find_line(out, r"GPU memory \d+ GiB; measured .*"),
        busy_line=_find_line(out, r"trials computed .* \(busy %\)"),
        time_line=_find_line(out, r"time: .*"), trial_gpu_peak_gib=_read_trial_peak_gib(folder),
        gpu_sampled=sampler.summarise(_to_epoch(run.get("started")),
                                      _to_epoch(run.get("ended"))))


def measure_headline(p: Part) -> str | None:
    folder = p.work / "results" / "study"
    if not (folder / "best.json").is_file():
        return "the study left no best config to retrain"
    most = 1 if p.dry else 30
    epochs, why = choose_epochs(folder, p.seconds_left() - 10, p.run.record, most)
    out = p.work / "final"
    p.figures.update(epochs=epochs, epochs_why=why)
    if p.run_hpo("train", "train", folder, "--seeds", "1", "--fraction", "1", "--epochs",
                 epochs, "--out", out):
        done = json.loads((out / "results.json").read_text())
        config = done["config"]
        p.figures.update(
            test_acc=done["mean"], seconds=done["runs"][0].get("seconds"),
            best_val=json.loads((folder / "study.json").read_text()).get("best"),
            config={k: config.get(k) for k in ("point", "stages", "width", "optimizer", "lr",
                                               "batch_size", "schedule")})
    return None


def choose_epochs(study: Path, seconds: float, record: dict, most: int) -> tuple[int, str]:
    """How many epochs of the final retrain fit in `seconds`, from the training speed the best
    trial had in the study (with up to three others beside it on the GPU, so alone it is no
    slower); the first 25 s go to starting the process, loading and the test pass."""
    best = json.loads((study / "study.json").read_text()).get("best") or {}
    with open(study / "epochs.csv", newline="") as f:
        speeds = [float(r["img_per_s"]) for r in csv.DictReader(f)
                  if r["trial_id"] == str(best.get("trial_id")) and r["img_per_s"]]
    data = record["parts"]["setup"].get("figures", {}).get("data") or {}
    images = data.get("train", 0) + data.get("val", 0)
    if not speeds or not images or max(speeds) <= 0:
        return 1, "1 epoch: the study recorded no training speed for its best trial"
    epoch_s = images / (sum(speeds) / len(speeds))
    fits = int((seconds - 25) / (1.15 * epoch_s))  # 15% for the work around the steps
    epochs = max(1, min(most, fits))
    return epochs, (f"{epochs} epoch(s): its best trial trained {sum(speeds) / len(speeds):,.0f} "
                    f"img/s in the study, about {epoch_s:.1f} s per epoch of {images:,} images, "
                    f"in {seconds:.0f} s (at most {most})")


def measure_search_quality(p: Part) -> None:
    work, out = p.work / "sq", p.work / "sq.json"
    png = p.run.json.with_name(p.run.json.stem + "-sq.png")
    methods = 4  # hpo and its three stock baselines (the script's ablations need more time)
    # each search is followed by Ray's shut-down and one retrain of its choice: ~12 s on a
    # GPU at these sizes, plus ~20 s to start and load once
    cap = max(0.1, (p.seconds_left() - 20 - 12 * methods) / methods / 60)
    sizes = (["--space", "tests/spaces/tiny.py", "--fraction", "1", "--max-epochs", "1",
              "--grace-period", "1", "--epoch-budget", "2", "--cpus", "2",
              "--time-cap", "0.5",
              # one of each way to search (ray-random is ray-optuna with another sampler):
              # every Ray start costs 5-15 s here
              "--methods", "hpo,ray-optuna,optuna-hyperband"] if p.dry
             else ["--full", "--gpus", "0.25", "--cpus", "4", "--fraction", "0.1",
                   "--max-epochs", "2", "--grace-period", "1", "--epoch-budget", "40",
                   "--time-cap", f"{cap:.2f}",
                   "--methods", "hpo,ray-optuna,ray-random,optuna-hyperband"])
    plot = ["--png", png] if (p.run.record.get("machine") or {}).get("matplotlib") else []
    ok = p.run_script("methods", "search_quality.py", *sizes, "--seeds", "1", "--work", work,
                      "--json", out, *plot)
    if ok:
        found = json.loads(out.read_text())
        p.figures.update(settings=found["settings"], methods={
            m: {k: v for k, v in f.items() if k not in ("anytime", "runs")} | {
                "run": {k: v for k, v in f["runs"][0].items() if k != "curve"}}
            for m, f in found["methods"].items()})
    else:  # the searches that ended before the stop each left their figures on file
        runs = sorted((work / "runs").glob("*-seed0.json"))
        if runs:
            p.figures["methods_finished"] = {
                r.name.removesuffix("-seed0.json"): {
                    k: v for k, v in json.loads(r.read_text()).items() if k != "curve"}
                for r in runs}


PARTS = {"setup": measure_setup, "throughput": measure_throughput, "packing": measure_packing,
         "checkpoint": measure_checkpoint, "features": measure_features,
         "study": measure_study, "headline": measure_headline,
         "search_quality": measure_search_quality}


class GpuSampler:
    """nvidia-smi's utilization.gpu (the share of time a kernel ran, not SM occupancy) and
    memory used, every 500 ms, while a block runs; nothing without nvidia-smi."""

    def __init__(self, path: Path):
        self.path, self.proc = path, None

    def __enter__(self):
        if shutil.which("nvidia-smi"):
            self.file = open(self.path, "w")
            self.proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=timestamp,utilization.gpu,memory.used,memory.total",
                 "--format=csv,noheader,nounits", "-lms", "500"], stdout=self.file,
                stderr=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc):
        if self.proc:
            self.proc.terminate()
            self.proc.wait()
            self.file.close()

    def summarise(self, start: float | None, end: float | None) -> dict | None:
        """Mean utilisation over [start, end] (the search's run as study.json dates it, to
        the second; else every sample) and the most memory used."""
        if not self.proc:
            return None
        rows = []
        for line in self.path.read_text().splitlines():
            parts = [s.strip() for s in line.split(",")]
            try:
                t = datetime.datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
                rows.append((t, float(parts[1]), float(parts[2]), float(parts[3])))
            except (ValueError, IndexError):
                continue  # a line cut short by the stop
        inside = [r for r in rows if start and end and start <= r[0] <= end + 1]
        window = "the search" if inside else "the whole command"
        inside = inside or rows
        if not inside:
            return None
        return {"util_mean_pct": round(sum(r[1] for r in inside) / len(inside), 1),
                "samples": len(inside), "window": window,
                "mem_used_max_mib": max(r[2] for r in rows), "mem_total_mib": rows[0][3]}


def _find_line(text: str, pattern: str) -> str | None:
    found = re.search(pattern, text)
    return found.group(0).strip() if found else None


def _to_epoch(iso: str | None) -> float | None:
    return datetime.datetime.fromisoformat(iso).timestamp() if iso else None


def _read_trial_peak_gib(study: Path) -> float | None:
    """The largest `gpu_peak` any trial reported (Tune's result.json of each trial)."""
    peaks = []
    for results in (study / "ray").glob("trial-*/result.json"):
        for line in results.read_text().splitlines():
            try:
                peaks.append(json.loads(line).get("gpu_peak") or 0)
            except json.JSONDecodeError:
                continue
    return round(max(peaks) / 2**30, 2) if peaks and max(peaks) else None


# ---------------------------------------------------------------------------------------------


def _parse_allowance(text: str) -> tuple[str, float]:
    name, _, seconds = text.partition("=")
    if name not in ALLOWANCE_S:
        raise argparse.ArgumentTypeError(f"no part {name!r} (parts: {', '.join(ALLOWANCE_S)})")
    try:
        return name, float(seconds)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give NAME=SECONDS") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--data", help="CIFAR-10 (default: ../shared/datasets/cifar10; on a device "
                   "machine .data/cifar10); with --check, decoded only when given")
    p.add_argument("--json", help="the figures (default gpu.json); with --check, the machine")
    p.add_argument("--log", help="every command's output (default: the JSON's name, .log)")
    p.add_argument("--work", help="scratch folder: studies, each script's JSON and log "
                   "(default: a new temporary folder)")
    p.add_argument("--commit", help="the commit measured, where the tree has no .git")
    p.add_argument("--parts", help=f"comma-separated, of: {', '.join(ALLOWANCE_S)} (default all;"
                   " setup always runs)")
    p.add_argument("--allowance", action="append", type=_parse_allowance, default=[],
                   metavar="PART=SECONDS", help="another allowance for a part (repeatable)")
    p.add_argument("--dry-run", action="store_true",
                   help="the same parts on the CPU at tiny sizes, on generated images")
    p.add_argument("--check", action="store_true",
                   help="check the prerequisites (and decode --data), print the machine")
    p.add_argument("--rows", metavar="JSON", help="print the BENCHMARKS.md section of a run")
    p.add_argument("--write-benchmarks", action="store_true",
                   help="with --rows: put that section into BENCHMARKS.md")
    args = p.parse_args(argv)
    args.allowance = dict(args.allowance)
    if args.rows:
        record = json.loads(Path(args.rows).read_text())
        if args.write_benchmarks:
            try:
                write_benchmarks(record, REPO / "BENCHMARKS.md")
            except ValueError as exc:
                fail(str(exc))
            print(f"BENCHMARKS.md: the run of {record['started']} written")
        else:
            print(render_section(record), end="")
        return 0
    if args.check:
        found = check(args.data, args.dry_run)
        m, d = found["machine"], found.get("data")
        print(f"ok: {m['gpu'] or 'no GPU'}, {m['cpus']} CPUs; Python {m['python']}, torch "
              f"{m['torch']} (CUDA {m['cuda']}), Ray {m['ray']}, Optuna {m['optuna']}, "
              f"matplotlib {m['matplotlib']}"
              + (f"; {d['path']}: {d['train'] + d['val']:,} + {d['test']:,} images in "
                 f"{d['seconds']:.1f} s" if d else "; no data checked"))
        if args.json:
            Path(args.json).write_text(json.dumps(found, indent=1) + "\n")
        return 0
    return measure(args)


def measure(args) -> int:
    args.json = args.json or "gpu.json"
    args.data = args.data or str(REPO.parent / "shared" / "datasets" / "cifar10")
    wanted = list(ALLOWANCE_S) if not args.parts else ["setup", *args.parts.split(",")]
    unknown = [n for n in wanted if n not in ALLOWANCE_S]
    if unknown:
        fail(f"no part {unknown[0]!r} (parts: {', '.join(ALLOWANCE_S)})")
    work = Path(args.work or tempfile.mkdtemp(prefix="hpo-gpu-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.dry_run:
        sys.path.insert(0, str(REPO / "tests"))
        from conftest import write_parquet_dataset

        write_parquet_dataset(work / "data", n_train=400, n_test=100)
    elif not Path(args.data).is_dir():
        fail(f"no data folder {args.data}{DATA_HINT}")
    for name in ("ray", "optuna"):  # the usual slip on a device machine, told at once
        if importlib.util.find_spec(name) is None:
            fail(f"{name} is not importable{KIT_HINT}")
    # the parts run in sessions of their own, which a signal to this process does not reach:
    # SIGTERM unwinds it like Ctrl-C, and stopping the running part's group on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    run = Run(args, work)
    print(f"bench/gpu.py: {run.budget} s budget; scratch folder {work}; figures -> {run.json}",
          flush=True)
    for name in ALLOWANCE_S:
        if name not in wanted:
            run.record["parts"][name].update(status="skipped", why="not among --parts")
            continue
        run.run_part(name, PARTS[name])
        if name == "setup" and run.record["parts"]["setup"]["status"] != "done":
            fail(f"setup: {run.record['parts']['setup']['why']}")
        run.print_part(name)
    run.save()
    print(f"bench/gpu.py: {run.record['wall_s']:.0f} s in all; {run.json}, {run.log}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
