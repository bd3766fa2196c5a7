"""--log mlflow and --log wandb: Ray Tune's own logger callbacks log every trial's config and
each epoch's metrics, stepped by epoch. Read back from a real search (conftest.noisy_study:
3 trials, one diverged, one crashed) with the mlflow client and W&B's offline run files."""

import json
import struct
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.e2e


def test_mlflow_has_a_run_per_trial_with_its_config_and_every_epoch(noisy_study):
    from mlflow.tracking import MlflowClient

    cwd, folder, _ = noisy_study
    # the default store: beside the study folders, one MLflow experiment per study
    client = MlflowClient(f"sqlite:///{cwd / 'results/mlflow.db'}")
    experiment = client.get_experiment_by_name("noisy")
    runs = {r.data.params["trial"]: r for r in client.search_runs([experiment.experiment_id])}
    board = pd.read_csv(folder / "leaderboard.csv", dtype={"trial_id": str})
    assert sorted(runs) == sorted(board.trial_id)
    epochs = pd.read_csv(folder / "epochs.csv", dtype={"trial_id": str})
    for row in board.itertuples():
        run = runs[row.trial_id]
        assert run.info.status == ("FAILED" if row.status == "failed" else "FINISHED")
        assert float(run.data.params["lr"]) == pytest.approx(
            json.loads((folder / "configs.json").read_text())[row.trial_id]["lr"])
        history = client.get_metric_history(run.info.run_id, "val_acc")
        curve = epochs[epochs.trial_id == row.trial_id]
        assert [m.step for m in history] == list(curve.epoch)
        assert [m.value for m in history] == pytest.approx(list(curve.val_acc))
    assert len(runs["0"].data.metrics) and not runs["1"].data.metrics  # the crash: no epoch


def wandb_records(path: Path):
    """The records of a W&B run file (run-*.wandb): LevelDB's log format, 32 KiB blocks of
    chunks with a 7-byte header, after a 7-byte file header; each record a protobuf."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, record, block = 7, b"", 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        record = chunk if kind in (1, 2) else record + chunk  # full/first, middle/last
        if kind in (1, 4):
            parsed = wandb_internal_pb2.Record()
            parsed.ParseFromString(record)
            yield parsed


def test_wandb_offline_writes_a_run_per_trial_with_its_config_and_every_epoch(noisy_study):
    _, folder, _ = noisy_study
    configs = json.loads((folder / "configs.json").read_text())
    epochs = pd.read_csv(folder / "epochs.csv", dtype={"trial_id": str})
    seen = {}
    for path in (folder / "wandb").glob("offline-run-*/run-*.wandb"):
        config, history = {}, []
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                assert (record.run.project, record.run.run_group) == ("hpo-test", "noisy")
                config.update({i.key: json.loads(i.value_json)
                               for i in record.run.config.update})
            elif kind == "config":
                config.update({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                               for i in record.config.update})
            elif kind == "history":
                item = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                        for i in record.history.item}
                if "epoch" in item:  # a trial's report (not W&B's own bookkeeping)
                    history.append((item["epoch"], item["val_acc"]))
        trial = str(config["trial"])
        seen[trial] = history
        assert config["lr"] == pytest.approx(configs[trial]["lr"])
        curve = epochs[epochs.trial_id == trial]
        assert [e for e, _ in history] == list(curve.epoch)
        assert [v for _, v in history] == pytest.approx(list(curve.val_acc))
    assert sorted(seen) == sorted(configs)
