"""Joining a running Ray cluster, whose Ray and Python must be exactly this process's."""

from __future__ import annotations

import re

import ray

from hpo.tuning.options import StudyError

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
