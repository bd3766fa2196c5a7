"""The experiment trackers a study also logs to (`--log mlflow`, `--log wandb`), through Ray
Tune's own logger callbacks: one tracker run per trial, with its config and every epoch's
metrics, stepped by epoch (the trial reports its epoch as Tune's `timesteps_total`)."""

from __future__ import annotations

import os
from pathlib import Path

from ray import tune

MLFLOW_STORE = "mlflow.db"  # in the folder of study folders, unless MLFLOW_TRACKING_URI


def tracker_callbacks(log: tuple[str, ...], study: Path,
                      wandb_project: str | None = None) -> list[tune.Callback]:
    """Ray Tune's logger callbacks for the trackers named in `log`, logging the trials of the
    study in folder `study` under its name: an MLflow experiment (in MLFLOW_TRACKING_URI, else
    an SQLite store beside the study folders, <results>/mlflow.db) and a W&B group in
    `wandb_project` (else WANDB_PROJECT), its runs' local files in <study>/wandb/.
    hpo.tuning.options checked both are installed."""
    callbacks: list[tune.Callback] = []
    if "mlflow" in log:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        uri = (os.environ.get("MLFLOW_TRACKING_URI")
               or f"sqlite:///{(study.parent / MLFLOW_STORE).resolve()}")
        callbacks.append(MLflowLoggerCallback(tracking_uri=uri, experiment_name=study.name,
                                              tags={"hpo.study": str(study)}))
    if "wandb" in log:
        from ray.air.integrations.wandb import WandbLoggerCallback

        # dir: each trial's W&B run in <study>/wandb/, written there, whole; Tune's default
        # (the trial's folder) is copied to the study before the last run's files are closed
        callbacks.append(WandbLoggerCallback(
            project=wandb_project or os.environ.get("WANDB_PROJECT"), group=study.name,
            dir=str(study.resolve())))
    return callbacks
