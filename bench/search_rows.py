"""BENCHMARKS.md's rows of a bench/search_quality.py run, read from its --json file alone:
the settings, one row per method, one table per compared quantity with a row per pair of
methods (paired by seed), and the anytime curves at a quarter, half, three quarters and all of
the budget. Nothing here estimates or fills in: a figure the run did not produce reads "-".

    python bench/search_quality.py --rows sq.json
"""

from __future__ import annotations

import statistics


def render(figures: dict) -> str:
    """The Markdown of one run: a settings paragraph, the methods' table, the comparisons'
    table and the anytime list."""
    return "\n".join([settings(figures), "", *methods_table(figures["methods"]), "",
                      *comparisons_table(figures.get("comparisons", [])), "",
                      *anytime(figures["methods"], figures["settings"]["epoch_budget"])])


def settings(figures: dict) -> str:
    s, prov = figures["settings"], figures["provenance"]
    val = s.get("validation_images")
    noise = f" (one validation image is {1 / val:.4f} of accuracy)" if val else ""
    points = ", ".join(s.get("starting_points") or []) or "none"
    load = prov.get("load_avg_1m") or [None, None]
    return (f"{s.get('dataset', 'cifar10')}: `{s['space']}` on `{s['data']}`, "
            f"{s['training_images']:,} training, {val if val is not None else '-'} validation"
            f"{noise} and {s.get('test_images', '-')} test images; trials of up to "
            f"{s['max_epochs']} epochs, ASHA from epoch {s['grace_period']} keeping 1/"
            f"{s['reduction_factor']:g}; the space's sampler {s.get('sampler', '-')} "
            f"({s.get('startup_trials', '-')} start-up trials), starting points: {points}; "
            f"budget {s['epoch_budget']} epochs or {s['time_cap_min']:g} min per search; "
            f"{_seeds(s)}; {s['cpus']} CPUs, {s['gpus_per_trial']} GPU per trial. "
            f"{prov['machine']}, torch {prov['torch']}, {prov['date']}, 1-minute load "
            f"{_num(load[0], 2)} before and {_num(load[1], 2)} after. Command: "
            f"`{prov['command']}`.")


def _seeds(s: dict) -> str:
    """The seeds: all that were asked for, or (a report of a run still under way) those each
    method has so far."""
    done = s.get("seeds_done")
    if not done:
        return f"{s['seeds']} seeds"
    return ("searches done so far of " + str(s["seeds"]) + " seeds: " + ", ".join(
        f"`{m}` {len(seeds)} (seed{'s' if len(seeds) != 1 else ''} "
        f"{', '.join(map(str, seeds))})" for m, seeds in done.items()))


def methods_table(methods: dict) -> list[str]:
    rows = ["| method | best val at the full budget (mean ± sd) | test of the chosen config, "
            "retrained (mean ± sd) | anytime curve's mean over the budget (mean ± sd) | "
            "per seed: best val / test | trials per search (mean, "
            "min–max) | epochs spent per search (mean) | wasted trials: infeasible, duplicate, "
            "diverged, oom (all seeds) | rejected draws (all seeds) | wall s per search "
            "(mean) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, f in methods.items():
        runs = f["runs"]
        per_seed = "; ".join(f"{r['best_val']:.3f} / {_num(r['test_acc'], 3)}" for r in runs)
        trials = [r["trials"] for r in runs]
        diverged = (f" ({f['retrain_diverged']} retrain(s) diverged)"
                    if f.get("retrain_diverged") else "")
        rows.append(
            f"| `{name}` | {f['best_val_mean']:.3f} ± {f['best_val_std']:.3f} | "
            f"{_pm(f['test_mean'], f['test_std'])}{diverged} | "
            f"{_pm(f.get('anytime_mean'), f.get('anytime_std'))} | {per_seed} | "
            f"{statistics.fmean(trials):.1f} ({min(trials)}–{max(trials)}) | "
            f"{statistics.fmean(r['epochs_spent'] for r in runs):.1f} | "
            f"{', '.join(str(f['wasted_total'][w]) for w in f['wasted_total'])} | "
            f"{f['rejected_total']} | {f['wall_s_mean']:.0f} |")
    return rows


QUANTITIES = {
    "best_val": "best validation accuracy at the full budget",
    "test_acc": "test accuracy of the chosen config, retrained",
    "anytime_mean": "the anytime curve's mean over the budget (best so far, epochs 1..budget)",
}


def comparisons_table(found: list[dict]) -> list[str]:
    """One table per compared quantity, one row per pair of methods."""
    rows: list[str] = []
    for key, what in QUANTITIES.items():
        if not found or key not in found[0]:
            continue
        rows += [*([""] if rows else []), f"Paired by seed, A − B: {what}.", "",
                 "| A − B | mean difference | 95% t interval | 95% bootstrap | wins / ties / "
                 "losses | sign test p (smallest possible) |",
                 "| --- | --- | --- | --- | --- | --- |"]
        for c in found:
            x = c[key]
            cells = (["-"] * 5 if not x["n"] else
                     [f"{x['mean']:+.4f}", _interval(x["t_ci"]), _interval(x["bootstrap_ci"]),
                      f"{x['wins']} / {x['ties']} / {x['losses']}",
                      f"{x['sign_p']:.3g} ({x['sign_p_min']:.3g})"])
            rows.append(f"| `{c['a']}` − `{c['b']}` | " + " | ".join(cells) + " |")
    return rows


def anytime(methods: dict, budget: int) -> list[str]:
    marks = sorted({max(1, round(budget * q)) for q in (0.25, 0.5, 0.75, 1.0)})
    lines = ["Anytime: best validation accuracy so far after N epochs spent, mean (min–max) "
             "over the seeds:", ""]
    for name, f in methods.items():
        a = f["anytime"]
        at = {e: i for i, e in enumerate(a["epochs"])}
        cells = [f"{a['mean'][at[e]]:.3f} ({a['min'][at[e]]:.3f}–{a['max'][at[e]]:.3f}) at {e}"
                 for e in marks if e in at]
        lines.append(f"- `{name}`: " + ", ".join(cells))
    return lines


def _interval(ci) -> str:
    return "-" if ci is None else f"[{ci[0]:+.4f}, {ci[1]:+.4f}]"


def _pm(mean, std) -> str:
    return "-" if mean is None else f"{mean:.3f} ± {std:.3f}"


def _num(x, digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}"
