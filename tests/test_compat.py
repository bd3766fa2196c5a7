"""One test per use hpo makes of a Ray or Optuna internal (hpo.compat): each fails, naming the
function, when a version bump changes what hpo leans on. Run this whole file first when moving
the pins in pyproject.toml: `python -m pytest tests/test_compat.py -m ''`."""

import inspect
import pickle
from pathlib import Path

import optuna
import pytest

from hpo import compat


def test_trial_handle_reports_and_marks_a_trial_this_process_did_not_ask_for():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), direction="maximize")
    number = study.ask().number  # asked, say, by an earlier run
    handle = compat.trial_handle(study, number)
    handle.report(0.5, 1)
    handle.set_user_attr("k", "v")
    handle.set_constraint("feasible", 1.0)
    stored = study.trials[number]
    assert stored.intermediate_values == {1: 0.5} and stored.user_attrs == {"k": "v"}
    assert stored.constraints == {"feasible": 1.0}, "compat.trial_handle: set_constraint"


def test_close_lets_a_storage_reconnect(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", study_name="s")
    compat.close(study)
    study.set_user_attr("after", 1)  # the pool reopens on use
    assert study.user_attrs == {"after": 1}, "compat.close"


def test_quiet_tune_switches_are_still_read_by_tune(monkeypatch):
    from ray.tune import tune
    from ray.tune.experimental import output

    monkeypatch.delenv("RAY_AIR_NEW_OUTPUT", raising=False)
    monkeypatch.delenv("TUNE_DISABLE_SIGINT_HANDLER", raising=False)
    compat.quiet_tune()
    assert 'os.environ.get("RAY_AIR_NEW_OUTPUT"' in inspect.getsource(output), \
        "compat.quiet_tune: Tune no longer reads RAY_AIR_NEW_OUTPUT"
    assert '"TUNE_DISABLE_SIGINT_HANDLER"' in inspect.getsource(tune), \
        "compat.quiet_tune: Tune no longer reads TUNE_DISABLE_SIGINT_HANDLER"


def test_local_cluster_address_reads_what_ray_reads(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.1.2.3:6379")
    assert compat.local_cluster_address() == "10.1.2.3:6379", "compat.local_cluster_address"


def test_driver_only_attributes_do_not_travel():
    class Holder(compat.DriverOnly):
        driver_only = ("live",)

        def __init__(self):
            self.live, self.kept = (lambda: None), 3  # a lambda does not pickle

    from ray import cloudpickle  # what Tune pickles its experiment with

    copy = pickle.loads(cloudpickle.dumps(Holder()))
    assert copy.live is None and copy.kept == 3


@pytest.fixture(scope="module")
def crashed(tmp_path_factory):
    """A Tune run of one trial that crashes once and then completes, with resources chosen
    per config through compat.per_trial_resources and a DriverOnly callback holding what
    cannot be pickled: (the Tune trial as the callback saw it at its retry, what it saw)."""
    import ray
    from ray import tune

    marker = tmp_path_factory.mktemp("marker") / "crashed"
    seen = {}

    def crashes_once(config):
        if not marker.exists():
            marker.touch()
            raise RuntimeError("crash once")
        tune.report({"done_at": 1})

    class Watch(compat.DriverOnly, tune.Callback):
        driver_only = ("unpicklable",)

        def __init__(self):
            self.unpicklable = lambda: None

        def on_trial_recover(self, iteration, trials, trial, **info):
            seen.update(retries=compat.retries(trial), file=compat.error_file(trial),
                        log=compat.error_log(trial))

    resources = compat.per_trial_resources("test", lambda config: {"CPU": config["cpus"]})
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        results = tune.Tuner(
            tune.with_resources(crashes_once, resources), param_space={"cpus": 2},
            run_config=tune.RunConfig(storage_path=str(tmp_path_factory.mktemp("tune")),
                                      callbacks=[Watch()], verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=1))).fit()
    finally:
        ray.shutdown()
    return results, seen


@pytest.mark.e2e  # a Tune run: the file's long tests, run with -m ''
def test_per_trial_resources_are_what_the_function_chose(crashed):
    results, _ = crashed
    assert results[0].metrics["done_at"] == 1
    # Tune asked for each trial's bundle through the function (2 CPUs, as its config said)
    assert results.get_dataframe()["config/cpus"].tolist() == [2], \
        "compat.per_trial_resources"


@pytest.mark.e2e
def test_a_crashed_trials_retries_and_error_file_are_read(crashed):
    _, seen = crashed
    assert seen["retries"] == (1, 1), "compat.retries"
    assert "crash once" in Path(seen["file"]).read_text(), "compat.error_file"
    assert seen["log"].endswith("error.txt"), "compat.error_log"


@pytest.mark.e2e
def test_the_probe_hpo_sends_to_address_is_answered_by_a_ray_cluster():
    import ray

    from hpo.preflight import _grpc_status

    context = ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        host, port = context.address_info["gcs_address"].rsplit(":", 1)
        assert _grpc_status(host, int(port)) is None, "compat.RAY_PROBE_METHOD"
    finally:
        ray.shutdown()
