"""A trial's checkpoint: what training needs to go on after an epoch, in one folder.

    model.pt   the weights after the epoch (a state_dict)
    train.pt   optimizer state, step, schedule, random streams (run_trial's `state()`), the
               best value so far, its epoch, which file holds that epoch's weights, and what
               the epoch reported
    best.pt    the best epoch's weights, when that epoch is not this one

All tensors, loaded with weights_only=True: a checkpoint is data, never code to run.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import torch


def save(folder: str | os.PathLike, model: Mapping[str, torch.Tensor],
         state: Mapping[str, Any], best: Mapping[str, Any],
         metrics: Mapping[str, Any] | None = None) -> None:
    """Write a checkpoint into `folder`: `model` (a state_dict), `state` (run_trial's state()),
    `best` ({"value", "epoch", "weights"}: the best epoch so far and a copy of its weights,
    or None where that epoch is this one) and `metrics`, what the epoch reported (plain
    values only)."""
    torch.save(dict(model), os.path.join(folder, "model.pt"))
    # train.pt names the file with the best epoch's weights: a best.pt left in the folder by
    # an earlier run of the study must not be taken for this one's
    best_file = "model.pt"
    if best["epoch"] != state["epoch"] and best["weights"] is not None:
        best_file = "best.pt"
        torch.save(best["weights"], os.path.join(folder, best_file))
    torch.save({**state, "best": best["value"], "best_epoch": best["epoch"],
                "best_file": best_file, "metrics": dict(metrics or {})},
               os.path.join(folder, "train.pt"))


def load(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The training state in `folder`, as run_trial's `resume` takes it (the weights under
    "model"), with "best", "best_epoch" and "best_weights"; None without a train.pt."""
    if not os.path.isfile(os.path.join(folder, "train.pt")):
        return None
    state = _load(folder, "train.pt")
    state["model"] = _load(folder, "model.pt")
    best = state.pop("best_file", "model.pt")
    state["best_weights"] = state["model"] if best == "model.pt" else _load(folder, best)
    return state


def best_file(folder: str | os.PathLike) -> str:
    """The path of the file in `folder` that holds the best epoch's weights."""
    return os.path.join(folder, _load(folder, "train.pt").get("best_file", "model.pt"))


def _load(folder, name: str):
    return torch.load(os.path.join(folder, name), map_location="cpu", weights_only=True)
