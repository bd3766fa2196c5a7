"""Which hyperparameters mattered in a study: Optuna's fANOVA over the record's trials.

Computed at the end of every run of a search (the record keeps it, study.json shows it, and
`hpo leaderboard` orders its columns by it without computing anything) and by the report.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

from hpo.record import Record
from hpo.registry import sign
from hpo.status import Status

MIN_COMPLETE = 10  # fewer COMPLETE trials than this: importance also counts ASHA-stopped ones
MIN_TRIALS = 5  # below this a forest over the dimensions says nothing


@dataclass
class Importances:
    """Each dimension's share of the metric's variance (summing to 1, largest first), and how
    it was found, in words; `values` is empty when there were too few trials."""

    values: dict[str, float]
    note: str


def importances(record: Record, metric: str, mode: str) -> Importances:
    """fANOVA (seed 0) of `metric` over the dimensions every assessed trial drew: completed
    trials at their best epoch (what TPE saw), and with fewer than MIN_COMPLETE of those the
    ASHA-stopped ones at their last. Starting points are left out: hand-picked, they say
    nothing about the space around them."""
    import optuna
    from optuna.trial import create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    done = [(t, t.best(metric, mode)[0]) for t in record.real()
            if t.status == Status.COMPLETED and t.best(metric, mode)]
    note, n_complete = "", len(done)
    if n_complete < MIN_COMPLETE:
        done += [(t, t.epochs[-1][metric]) for t in record.real()
                 if t.status == Status.STOPPED and t.epochs and t.epochs[-1].get(metric)
                 is not None]
        if len(done) > n_complete:
            note = (f"Only {n_complete} trials completed, so {len(done) - n_complete} stopped "
                    "by ASHA count too, at their last epoch's value. ")
    points = sum(bool(t.point) for t, _ in done)
    done = [(t, v) for t, v in done if not t.point and math.isfinite(v)]
    # fANOVA needs every dimension in every trial: conditional ones (`when=`) absent from some
    # trials are left out, the rest are assessed over all trials
    seen = {p for t, _ in done for p in t.drawn}
    params = sorted(set.intersection(*(set(t.drawn) for t, _ in done))) if done else []
    if len(done) < MIN_TRIALS or not params:
        return Importances({}, f"no importances yet: {len(done)} finished trials (starting "
                               f"points aside), and at least {MIN_TRIALS} are needed")
    copy = optuna.create_study(direction="maximize" if sign(mode) > 0 else "minimize")
    copy.add_trials([create_trial(params={p: t.drawn[p] for p in params}, value=v,
                                  distributions={p: t.distributions[p] for p in params})
                     for t, v in done])
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        note = "Optuna's fANOVA (seed 0). " + note
    except ImportError:  # fANOVA's random forest is scikit-learn's
        evaluator = optuna.importance.PedAnovaImportanceEvaluator()
        note = "PED-ANOVA: fANOVA needs scikit-learn, which is not installed. " + note
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "few trials per region": the note says how many
        found = optuna.importance.get_param_importances(copy, evaluator=evaluator)
    note += f"From {len(done)} trials" + (f" (starting points left out: {points})." if points
                                          else ".")
    if absent := sorted(seen - set(params)):
        note += f" Not assessed (absent from some trials): {', '.join(absent)}."
    return Importances({k: float(v) for k, v in found.items()}, note)
