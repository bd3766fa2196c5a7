"""The BENCHMARKS.md rows of a bench/gpu.py run: one row a figure (figure, value, target,
command, machine), read from the run's JSON alone, "not measured (why)" wherever a part or
one of its commands did not finish. Nothing here estimates or fills in.
"""

from __future__ import annotations

from pathlib import Path

STUDY_TRIALS = 64
HANDTUNED = "90.74% by hand (report 002, experiment 11; 89.2% for that net on this JPEG copy)"


def _explain_missing(part: dict, key: str | None = None) -> str:
    entry = next((c for c in part.get("commands", []) if c["key"] == key), None)
    if entry and entry.get("why"):
        why = entry["why"]
    elif part.get("status") == "running":
        why = "the run was killed during this part"
    elif part.get("status") == "pending":
        why = "the run ended before this part"
    elif part.get("why"):
        why = part["why"]
    elif part.get("status") == "done":
        why = "its commands ended without leaving these figures"
    else:
        why = f"the part ended {part.get('status')}"
    return f"not measured ({why})"


def _show_command(part: dict, key: str) -> str:
    entry = next((c for c in part.get("commands", []) if c["key"] == key), None)
    return f"`{entry['command']}`" if entry else "not run"


def render_setup(part, record):
    d = part.get("figures", {}).get("data")
    value = (f"{d['seconds']:.1f} s for {d['train'] + d['val'] + d['test']:,} images "
             f"({'decoded' if d['decoded'] else 'a cache hit: decoded earlier'})" if d
             else _explain_missing(part, "check"))
    return [("loading the data set (decoding it into $HPO_CACHE)", value, "none set",
             _show_command(part, "check"))]


def render_throughput(part, record):
    rows = []
    targets = {"vgg": ("single-trial img/s, VGG-style, batch 512", "≥ 150k img/s"),
               "basenet": ("single-trial img/s, BaseNet", "≥ 250k img/s")}
    for net, (figure, target) in targets.items():
        f = part.get("figures", {}).get(net)
        value = (f"{f['engine_img_per_s']:,.0f} img/s ({f['train_images']:,} training images, "
                 f"batch {f['batch_size']}, {f['params']:,} params)" if f
                 else _explain_missing(part, net))
        rows.append((figure, value, target, _show_command(part, net)))
    cpus = (record.get("machine") or {}).get("cpus")
    for net in targets:
        f = part.get("figures", {}).get(net)
        value = (f"{f['ratio']:.1f}× the steady DataLoader "
                 f"({f['dataloader_steady_img_per_s']:,.0f} img/s, {f['workers']} workers on "
                 f"{cpus} CPUs); {f['ratio_whole_epoch']:.1f}× its whole epoch (first step "
                 f"{f['dataloader_first_step_s']:.1f} s)" if f
                 else _explain_missing(part, net))
        rows.append((f"engine vs DataLoader (PIL transforms), {net}", value, "≥ 8×",
                     _show_command(part, net)))
    return rows


def render_packing(part, record):
    f = part.get("figures", {})
    runs = {r["k"]: r for r in f.get("runs", [])}
    if runs:
        top = max(runs)
        value = (f"{runs[top]['aggregate_img_per_s']:,.0f} img/s at k={top} against "
                 f"{runs[min(runs)]['aggregate_img_per_s']:,.0f} at k={min(runs)}: "
                 + ", ".join(f"k={k} {r['ratio_to_k1']:.2f}×" for k, r in runs.items())
                 + f" ({f['net']}, {f['epochs']} epoch(s) of {f['train_images']:,} images)")
        mems = [f"k={k}: " + (" ".join(f"{m:,.0f}" for m in r["peak_mib"]) + " MiB"
                              if r["peak_mib"][0] is not None else "none (CPU)")
                for k, r in runs.items()]
        memory = "; ".join(mems)
    else:
        value = memory = _explain_missing(part, "k")
    return [("packing, aggregate at k trials vs k=1", value, "≥ 1.8× at k=4",
             _show_command(part, "k")),
            ("packing, peak memory per trial (max_memory_allocated, its copy of the data "
             "included)", memory, "none set", _show_command(part, "k"))]


def render_checkpoint(part, record):
    nets = part.get("figures", {}).get("nets")
    if not nets:
        return [("a checkpoint's share of an epoch, each starting point",
                 _explain_missing(part, "nets"), "near 1% at the default 120 s",
                 _show_command(part, "nets"))]
    rows = []
    for name, n in nets.items():
        value = (f"{n['checkpoint_mb']} MB in {n['checkpoint_s']:.3f} s; epoch "
                 f"{n['epoch_s']:.2f} s with validation; {n['share_every_epoch']:.1%} if taken "
                 f"every epoch, {n['share_at_every']:.2%} at one per 120 s"
                 if n.get("status") == "completed" else f"{n['status']}: {n.get('reason')}")
        rows.append((f"a checkpoint's share of an epoch, {name}", value,
                     "near 1% at the default 120 s", _show_command(part, "nets")))
    return rows


def render_features(part, record):
    f = part.get("figures", {})
    if "runs" in f:
        r = f["runs"]
        value = (f"uncached {r['uncached']['wall_s']:.1f} s, cold {r['cached_cold']['wall_s']:.1f}"
                 f" s, warm {r['cached_warm']['wall_s']:.1f} s: {f['speedup_warm']:.1f}× warm, "
                 f"{f['speedup_cold']:.1f}× cold ({f['backbone']} at {f['input_size']} px, "
                 f"{f['train_images']:,} + {f['val_images']:,} images, {f['epochs']} epoch(s), "
                 f"batch {f['batch_size']})")
    else:
        value = _explain_missing(part, "trials")
    sized = (" (sized down from 10 epochs of all of CIFAR-10)" if "runs" in f and not
             record["dry_run"] and (f["epochs"] < 10 or f["train_images"] < 45_000) else "")
    return [("frozen backbone's trial with the feature cache vs without" + sized, value,
             "none set", _show_command(part, "trials"))]


def render_study(part, record):
    f = part.get("figures", {})
    command = _show_command(part, "search")
    if "busy_fraction" not in f:
        missing = _explain_missing(part, "search")
        return [(figure, missing, target, command) for figure, target in (
            (f"GPU busy % over a {STUDY_TRIALS}-trial study", "≥ 70%"),
            ("trials per GPU as hpo picks them, and GPU memory", "never oversubscribed"),
            (f"where the {STUDY_TRIALS}-trial study's time went", "none set"),
            (f"the {STUDY_TRIALS}-trial study's outcome", "none set"))]
    g = f.get("gpu_sampled")
    util = (f"; nvidia-smi utilization.gpu (a kernel running, not SM occupancy) "
            f"{g['util_mean_pct']:.0f}% on average over {g['window']} ({g['samples']} samples)"
            if g else "; no nvidia-smi")
    stop = f", stopped by {f['stopped_by']}" if f.get("stopped_by") else ""
    sized = (f"{f['trials']} of {f['trials_asked']} trials, {f['max_epochs']}-epoch trials on "
             f"{f['fraction']:.0%} of the training split{stop}")
    memory = (f"{f['packing_line'] or 'no probe line (no GPU)'}; largest trial peak "
              + (f"{f['trial_gpu_peak_gib']} GiB" if f.get("trial_gpu_peak_gib") else "none")
              + (f"; at most {g['mem_used_max_mib']:,.0f} of {g['mem_total_mib']:,.0f} MiB "
                 "in use (nvidia-smi)" if g else "")
              + f"; {f['statuses'].get('oom', 0)} trial(s) out of memory")
    t = f["time"]
    spent = (f"data {t['data_s']:.1f} s before the search; search {t['search_s']:.0f} s, of "
             f"which starting Ray {t['ray_start_s']:.0f} s and no trial computing "
             f"{t['idle_s']:.0f} s; trial-seconds: training {t['train_s']:.0f}, evaluation "
             f"{t['eval_s']:.0f}, start-up and reporting {t['trial_other_s']:.0f}")
    best = f.get("best") or {}
    outcome = (", ".join(f"{n} {s}" for s, n in sorted(f["statuses"].items()))
               + f"; {f['rejected']} draws rejected, {f['duplicates']} duplicates"
               + (f"; best val_acc {best['val_acc']:.4f} (trial {best['trial_id']})"
                  if "val_acc" in best else ""))
    sampled = command + (" with `nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,"
                         "memory.total --format=csv,noheader,nounits -lms 500` beside it"
                         if g else "")
    return [(f"GPU busy % over a {STUDY_TRIALS}-trial study ({sized})",
             f"{f['busy_fraction']:.0%} (hpo's busy %: a trial training or evaluating){util}",
             "≥ 70%", sampled),
            ("trials per GPU as hpo picks them, and GPU memory", memory, "never oversubscribed",
             sampled),
            (f"where the {STUDY_TRIALS}-trial study's time went", spent, "none set", command),
            (f"the {STUDY_TRIALS}-trial study's outcome", outcome, "none set", command)]


def render_headline(part, record):
    f = part.get("figures", {})
    if "test_acc" in f:
        c = f["config"]
        value = (f"{f['test_acc']:.2%} after {f['epochs']} epoch(s) ({f['seconds']} s; seed 0, "
                 f"trained on train + validation) of the study's best: "
                 + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                             for k, v in c.items() if v is not None)
                 + f". Epochs: {f['epochs_why']}")
    else:
        value = _explain_missing(part, "train")
    return [("CIFAR-10 test accuracy of the search's best config, retrained", value, HANDTUNED,
             _show_command(part, "train"))]


def render_search_quality(part, record):
    f = part.get("figures", {})
    command = _show_command(part, "methods")
    if "methods" not in f:
        done = f.get("methods_finished") or {}
        note = (" (searches that finished before the stop: " + ", ".join(
            f"{m} best val {r['best_val']:.4f}" for m, r in done.items()) + ")") if done else ""
        return [("search quality, sized down: hpo vs Ray Tune + Optuna, random + ASHA, "
                 "Optuna + Hyperband", _explain_missing(part, "methods") + note,
                 "hpo at or above every baseline's mean", command)]
    s = f["settings"]
    sized = (f"1 seed, {s['training_images']:,} training images, {s['max_epochs']}-epoch "
             f"trials, {s['epoch_budget']} epochs or {s['time_cap_min']:.2f} min per search, "
             f"{s['gpus_per_trial']} GPU per trial")
    rows = []
    for method, m in f["methods"].items():
        r = m["run"]
        test = "diverged" if r["test_acc"] is None else f"{r['test_acc']:.4f}"
        value = (f"best val {r['best_val']:.4f}, test of its choice retrained {test}; "
                 f"{r['trials']} trials, {r['epochs_spent']} epochs, {r['wall_s']:.0f} s; "
                 f"wasted {sum(r['wasted'].values())}, rejected {r['rejected']}")
        target = "at or above every baseline" if method == "hpo" else "(a baseline)"
        rows.append((f"search quality, {method} ({sized})", value, target, command))
    return rows


RENDER = {"setup": render_setup, "throughput": render_throughput, "packing": render_packing,
          "checkpoint": render_checkpoint, "features": render_features, "study": render_study,
          "headline": render_headline, "search_quality": render_search_quality}


def render_part(name: str, part: dict, record: dict) -> list[tuple[str, str, str, str]]:
    """A part's rows; one row saying so where its figures do not render (the JSON keeps
    them whatever this file does with them)."""
    try:
        return RENDER[name](part, record)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        return [(f"{name}: its figures", f"not rendered ({type(exc).__name__}: {exc}; they are "
                 "in the JSON)", "", "")]


def render_section(record: dict) -> str:
    """The dated BENCHMARKS.md section of one run: a paragraph on how it ran, one row a
    figure, and markers that let --write-benchmarks replace it rather than add it twice."""
    m = record.get("machine") or {}
    where = (f"{m['gpu']} ({m['gpu_memory_gib']} GiB, driver {m.get('driver')})" if m.get("gpu")
             else "no GPU" if m else "machine not recorded (setup did not finish)")
    host = (f"{m['cpus']} CPUs ({m['cpu']}), {m['memory_gib']} GiB; Python {m['python']}, "
            f"torch {m['torch']} (CUDA {m['cuda']}), Ray {m['ray']}, Optuna {m['optuna']}"
            + "".join(f" ({text})" for text in m.get("outside_pins") or []) if m else "")
    machine = f"{m.get('gpu') or 'CPU'}, {m.get('cpus')} CPUs, torch {m.get('torch')}"
    title = ("DRY RUN on the CPU: tiny sizes, not figures" if record["dry_run"]
             else f"every GPU figure in one run, {m.get('gpu') or 'no GPU'}")
    parts = record["parts"]
    spent = ", ".join(f"{n} {p.get('wall_s', 0):.0f}/{p.get('limit_s', p.get('allowance_s', 0))}"
                      f" s{'' if p['status'] == 'done' else ' ' + p['status']}"
                      for n, p in parts.items())
    lines = [f"<!-- bench/gpu.py run {record['started']} -->",
             f"## {record['date']} — {title} (bench/gpu.py)", "",
             f"`{record['command']}` at commit {record['commit'] or 'unknown'}, started "
             f"{record['started']}; {where}; {host}. {record.get('wall_s', 0):.0f} s in all, of "
             f"a {record['budget_s']} s budget; each part's seconds against its allowance: "
             f"{spent}. `<work>` is the run's scratch folder.", "",
             "| figure | value | target | command | machine |", "| --- | --- | --- | --- | --- |"]
    for name, part in parts.items():
        for figure, value, target, command in render_part(name, part, record):
            cells = [figure, value, target, command, machine]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines.append(f"<!-- end of bench/gpu.py run {record['started']} -->")
    return "\n".join(lines) + "\n"


NOT_MEASURED = "## On one H100/H200: not measured"


def write_benchmarks(record: dict, path: Path) -> None:
    """Put the run's section into BENCHMARKS.md: in place of the same run's earlier rendering,
    else as a new section before the not-measured list (every run stays listed)."""
    if record["dry_run"]:
        raise ValueError("a --dry-run's JSON holds CPU sizes, not figures: not written to "
                         "BENCHMARKS.md")
    text, section = path.read_text(), render_section(record)
    begin = f"<!-- bench/gpu.py run {record['started']} -->"
    end = f"<!-- end of bench/gpu.py run {record['started']} -->\n"
    if begin in text:
        a = text.index(begin)
        b = text.index(end, a) + len(end)
        text = text[:a] + section + text[b:]
    elif NOT_MEASURED in text:
        a = text.index(NOT_MEASURED)
        text = text[:a] + section + "\n" + text[a:]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
