"""Every use hpo makes of Ray's or Optuna's internals, and nowhere else.

Each function here leans on something the libraries do not promise to keep (a private
attribute, an undocumented switch, how Tune pickles its experiment). tests/test_compat.py has
one test per function that fails loudly, naming the function, when a version bump breaks it;
moving the pins in pyproject.toml means running that file first. Ray is imported only inside
the functions that need it, so the record (hpo.record) uses this module without Ray.
"""

from __future__ import annotations

import os
import posixpath
from typing import Any, Callable

import optuna


# -- Optuna ------------------------------------------------------------------------------------
def trial_handle(study: optuna.Study, number: int) -> optuna.trial.Trial:
    """A live handle on trial `number` of `study` (one this process did not ask for: a trial an
    earlier run left unfinished), for its report(), set_user_attr() and set_constraint().
    Optuna's public API hands out handles only from ask(); its Trial takes a storage id."""
    storage = study._storage
    trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    return optuna.trial.Trial(study, trial_id)


def close(study: optuna.Study) -> None:
    """Close the database connections `study`'s storage holds (Optuna keeps a pool open for
    the life of the process; a database may be about to go away)."""
    storage = study._storage
    if hasattr(storage, "engine"):
        storage.remove_session()
        storage.engine.dispose()


# -- Ray Tune ---------------------------------------------------------------------------------
def quiet_tune() -> None:
    """Keep Tune's own output and signal handling out of the driver: Tune's older output
    engine, the one that takes a custom ProgressReporter (the newer one prints a
    "Configuration for experiment" box and a TensorBoard hint), and no SIGINT handler of its
    own (hpo's decides what Ctrl-C does)."""
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"


def retries(trial) -> tuple[int, int]:
    """(the retry a crashed Tune trial is on, the retries it may have)."""
    return trial.run_metadata.num_failures, trial.max_failures


def error_file(trial) -> str | None:
    """The local file holding a crashed Tune trial's last error, or None."""
    return trial.error_file


def error_log(trial) -> str:
    """Where the whole of a Tune trial's errors (error.txt, every attempt's traceback) is
    kept, as a path or a URI: in its folder of the study, or of --storage-path."""
    path = posixpath.join(trial.path, trial.run_metadata.error_filename or "error.txt")
    kind = trial.storage.storage_filesystem.type_name
    return path if kind == "local" else f"{kind}://{path}"


class DriverOnly:
    """A mixin for the driver's Tune searcher, callbacks and stopper. Tune pickles them into
    its experiment state (for a Tuner.restore hpo never does: the record is what resumes);
    the attributes named in `driver_only` (a live view, the record, a searcher) cannot go
    there, and go as None."""

    driver_only: tuple[str, ...] = ()

    def __getstate__(self) -> dict[str, Any]:
        return {k: (None if k in self.driver_only else v) for k, v in self.__dict__.items()}


# Tune calls a trainable's resources function in the driver for every new trial, through the
# trainable it pickled; the function looks its state up here by a key the pickle carries.
_RESOURCES: dict[str, Callable[[dict], Any]] = {}


def per_trial_resources(key: str, choose: Callable[[dict], dict[str, float]]):
    """A function Tune takes as with_resources(...)'s per-config resources: Ray's bundle of
    what `choose(config)` returns ({"CPU": n, "GPU": f})."""
    import functools

    _RESOURCES[key] = choose
    return functools.partial(_resources, key)


def _resources(key: str, config: dict):
    from ray import tune

    return tune.PlacementGroupFactory([_RESOURCES[key](config)])


# -- Ray core ---------------------------------------------------------------------------------
def local_cluster_address() -> str | None:
    """The address `ray.init(address="auto")` would join (RAY_ADDRESS, the cluster `ray start`
    left on this machine), or None when there is none."""
    from ray._private.services import get_ray_address_from_environment

    try:
        return get_ray_address_from_environment("auto", None)
    except ConnectionError:
        return None


# a call of Ray's cluster service every GCS answers (hpo.preflight probes --address with it)
RAY_PROBE_METHOD = "/ray.rpc.NodeInfoGcsService/GetClusterId"
