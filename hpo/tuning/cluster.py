"""Joining a running Ray cluster, whose Ray and Python must be exactly this process's, and
waiting for a node a trial fits on."""

from __future__ import annotations

import re
import time
from typing import Callable

import ray

from hpo.errors import StudyError, StudyFault

# Ray's refusal lists the cluster's versions, then this process's:
# "Version mismatch: The cluster was started with:\n    Ray: 2.59.0\n    Python: 3.11.2\n..."
_VERSIONS = re.compile(r"Ray: (\S+)\s+Python: (\S+)")


def join_cluster(address: str, env: dict[str, str] | None = None) -> None:
    """Connect this process to the Ray cluster at `address` as its driver; `env` is set in
    every process of the job, on every node (Ray's runtime_env).

    Raises StudyError, one line naming both versions, when the cluster runs another Ray or
    Python than this process: Ray refuses such a driver with a message of several lines.

    Example:
        >>> join_cluster("10.0.0.5:6379")
    """
    try:
        ray.init(address=address, log_to_driver=False,
                 runtime_env={"env_vars": env} if env else None)
    except ConnectionError as exc:
        raise StudyError(f"--address {address}: {str(exc).splitlines()[0]}") from None
    except RuntimeError as exc:
        found = _VERSIONS.findall(str(exc))
        if not str(exc).startswith("Version mismatch") or len(found) != 2:
            raise
        ray.shutdown()
        raise StudyError(_mismatch(address, *found)) from None


def _mismatch(address: str, cluster: tuple[str, str], here: tuple[str, str]) -> str:
    (cluster_ray, cluster_python), (ray_here, python_here) = cluster, here
    if cluster_ray != ray_here:
        fix = (f'install the same Ray here (pip install "ray[tune]=={cluster_ray}") '
               f"or start the cluster with Ray {ray_here}")
    else:
        fix = f"run hpo with Python {cluster_python}, as the cluster does"
    return (f"--address {address}: the cluster runs Ray {cluster_ray} on Python "
            f"{cluster_python}, this machine Ray {ray_here} on Python {python_here}; "
            f"they must be the same: {fix}")


def fits(node: dict, cpus: float, gpus: float) -> bool:
    """Whether one trial asking for `cpus` and `gpus` fits on a node of ray.nodes() (a share
    of one GPU, or whole GPUs)."""
    have = node.get("Resources", {})
    return node.get("Alive") and have.get("CPU", 0) >= cpus and have.get("GPU", 0) >= (
        gpus if gpus > 1 else (1 if gpus > 0 else 0))


def await_fit(cpus: float, gpus: float, wait_s: float, say: Callable[[str], None],
              poll_s: float = 5.0) -> None:
    """Return once some node of the cluster can take a trial asking for `cpus` CPUs and
    `gpus` GPUs; meanwhile say once what is awaited. hpo cannot tell whether a cluster it
    joined autoscales, so it waits `wait_s` seconds (--node-wait) for one to be added, then
    raises StudyFault (nothing ran; the same command tries again)."""
    deadline, told = time.monotonic() + wait_s, False
    while not any(fits(n, cpus, gpus) for n in ray.nodes()):
        want = f"{cpus:g} CPU" + (f" and {gpus:g} GPU" if gpus else "")
        if time.monotonic() >= deadline:
            raise StudyFault(f"no node of the cluster offers {want} for a trial, and none was "
                             f"added in {wait_s / 60:g} min (--node-wait); ask for less "
                             "(--cpus-per-trial, --gpus-per-trial) or add such a node")
        if not told:
            say(f"no node of the cluster offers {want} for a trial yet: waiting up to "
                f"{wait_s / 60:g} min for the autoscaler to add one (--node-wait)")
            told = True
        time.sleep(poll_s)
