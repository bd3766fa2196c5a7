"""Clusters: cluster.yaml, the Ray cluster-launcher config for AWS, and joining a running
cluster with `hpo search --address` (hpo/tuning/cluster.py).

Validation uses the schema Ray ships (ray/autoscaler/ray-schema.json) through
``validate_config(prepare_config(cfg))``, the same pair ``ray up`` runs. Neither
call talks to AWS; the ``offline`` fixture makes any network use fail the test.
"""

import copy
import re
import socket
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from raycluster import RayCluster

ROOT = Path(__file__).parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
TINY = ROOT / "tests/spaces/tiny.py"
# a Ray release other than this one, for a cluster this process must refuse to join
OTHER_RAY = "2.59.0" if ray.__version__ != "2.59.0" else "2.58.1"


@pytest.fixture
def offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("validating cluster.yaml must not use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def cfg():
    with open(CLUSTER_YAML) as f:
        return yaml.safe_load(f)


def prepared(cfg):
    """The config as `ray up` sees it: Ray's AWS defaults filled in, then validated."""
    full = prepare_config(copy.deepcopy(cfg))
    validate_config(full)
    return full


def worker_types(cfg):
    return {
        name: node
        for name, node in cfg["available_node_types"].items()
        if name != cfg["head_node_type"]
    }


def is_spot(node):
    return node["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"


def test_config_passes_rays_schema(cfg, offline):
    prepared(cfg)


def _rename(mapping, old, new):
    mapping[new] = mapping.pop(old)


@pytest.mark.parametrize(
    "misspell",
    [
        pytest.param(lambda c: _rename(c, "max_workers", "max_worker"), id="max_worker"),
        pytest.param(
            lambda c: _rename(c, "idle_timeout_minutes", "idle_timeout_minute"),
            id="idle_timeout_minute",
        ),
        pytest.param(
            lambda c: _rename(c["available_node_types"]["gpu_spot"], "min_workers", "min_worker"),
            id="node_type.min_worker",
        ),
        pytest.param(
            lambda c: _rename(c["available_node_types"]["gpu_ondemand"], "resources", "resource"),
            id="node_type.resource",
        ),
    ],
)
def test_misspelt_key_fails_validation(cfg, offline, misspell):
    bad = copy.deepcopy(cfg)
    misspell(bad)
    with pytest.raises(jsonschema.ValidationError):
        prepared(bad)


def test_dashboard_only_on_localhost(cfg, offline):
    # Checked after defaults are filled in: Ray's default head command binds 0.0.0.0.
    full = prepared(cfg)
    head_starts = [c for c in full["head_start_ray_commands"] if "ray start" in c]
    assert head_starts, "head_start_ray_commands must start Ray"
    for command in head_starts:
        assert "--head" in command
        assert "--dashboard-host=127.0.0.1" in command
    every_command = [
        c
        for key, value in full.items()
        if key.endswith("_commands")
        for c in value
    ]
    assert not [c for c in every_command if "0.0.0.0" in c]


def _opens_to_outside(rule):
    return any(rule.get(k) for k in ("IpRanges", "Ipv6Ranges", "PrefixListIds"))


def _extra_rules(cfg):
    return cfg["provider"].get("security_group", {}).get("IpPermissions", [])


def test_added_security_group_rules_only_open_ssh(cfg):
    for rule in _extra_rules(cfg):
        port = (rule.get("FromPort"), rule.get("ToPort"), rule.get("IpProtocol"))
        assert port == (22, 22, "tcp"), rule


def test_only_ssh_is_reachable_from_outside(cfg):
    # The rules Ray itself writes into the security group it creates for the cluster
    # (Ray's AWS module needs boto3, which `ray up` on AWS needs anyway).
    pytest.importorskip("boto3")
    from ray.autoscaler._private.aws.config import _create_default_inbound_rules

    cluster_group = "sg-0123456789abcdef0"
    for rule in _create_default_inbound_rules({cluster_group}, _extra_rules(cfg)):
        if _opens_to_outside(rule):
            assert (rule["FromPort"], rule["ToPort"], rule["IpProtocol"]) == (22, 22, "tcp"), rule
        else:
            assert rule["UserIdGroupPairs"] == [{"GroupId": cluster_group}], rule


def test_idle_workers_are_removed(cfg):
    assert isinstance(cfg["idle_timeout_minutes"], int)
    assert 0 < cfg["idle_timeout_minutes"] <= 30
    # Terminate rather than stop, so stopped instances' disks do not keep billing.
    assert cfg["provider"]["cache_stopped_nodes"] is False
    assert all(n.get("min_workers", 0) == 0 for n in cfg["available_node_types"].values())


def test_spot_and_on_demand_gpu_workers(cfg):
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "no trials may be scheduled on the head"
    assert head["resources"].get("GPU", 0) == 0

    workers = worker_types(cfg)
    spot = [n for n in workers.values() if is_spot(n)]
    on_demand = [n for n in workers.values() if not is_spot(n)]
    assert spot and on_demand
    for node in workers.values():
        assert node["resources"]["GPU"] == 1
        assert node["resources"]["CPU"] >= 1
    assert {n["node_config"]["InstanceType"] for n in spot} == {
        n["node_config"]["InstanceType"] for n in on_demand
    }
    # Spot is preferred: higher priority than every on-demand type.
    assert min(n.get("priority", 0) for n in spot) > max(n.get("priority", 0) for n in on_demand)


def test_paths_are_relative_and_junk_is_not_synced(cfg):
    for remote, local in cfg["file_mounts"].items():
        assert not Path(local).is_absolute(), local
        assert remote.startswith("~/"), remote
    excluded = {p.strip("/") for p in cfg["rsync_exclude"]}
    assert {"results", ".venv", ".git", "__pycache__"} <= excluded


def test_every_node_boots_the_current_deep_learning_ami_of_the_region(cfg, offline):
    # EC2 resolves the public SSM parameter at each launch: no AMI id to look up or go stale
    images = {n["node_config"]["ImageId"] for n in prepared(cfg)["available_node_types"].values()}
    assert len(images) == 1, images
    assert re.fullmatch(r"resolve:ssm:/aws/service/deeplearning/ami/x86_64/[a-z0-9.-]+/latest/"
                        r"ami-id", images.pop())


def test_the_region_is_named_once(cfg):
    # provider.region alone: availability zones and everything else follow from it
    regions = re.findall(r"\b[a-z]{2}-[a-z]+-\d[a-z]?\b", CLUSTER_YAML.read_text())
    assert regions == [cfg["provider"]["region"]], regions
    assert "availability_zone" not in cfg["provider"]


def test_nodes_install_this_ray(cfg):
    # a driver is refused by a cluster of any other Ray (see the test below)
    pins = re.findall(r"ray\[[a-z,]+\]==([0-9.]+)", " ".join(cfg["setup_commands"]))
    assert pins == [ray.__version__], pins


@pytest.fixture(scope="module")
def other_ray(tmp_path_factory) -> Path:
    """The Python of a venv with Ray OTHER_RAY, the same interpreter as this one (Ray also
    refuses another Python), installed from the package index."""
    venv = tmp_path_factory.mktemp("other-ray")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin/python"
    pip = subprocess.run([str(python), "-m", "pip", "install", "-q", f"ray=={OTHER_RAY}"],
                         capture_output=True, text=True, timeout=900)
    if pip.returncode != 0:
        pytest.skip(f"could not install ray=={OTHER_RAY}: {pip.stderr.strip()[-300:]}")
    return python


@pytest.mark.cluster
def test_refuses_a_cluster_of_another_ray_in_one_line(other_ray, tiny_parquet, tmp_path):
    with RayCluster(python=other_ray) as cluster:
        cluster.add_node("head", cpus=1, head=True)
        found = subprocess.run(
            [sys.executable, "-m", "hpo.cli", "search", str(TINY), "--data", str(tiny_parquet),
             "--address", cluster.address, "--trials", "1"],
            cwd=tmp_path, env=cluster.env, capture_output=True, text=True, timeout=300)
    lines = found.stderr.strip().splitlines()
    print(found.stderr)
    assert found.returncode == 2, found.stderr[-3000:]
    assert len(lines) == 1, found.stderr[-3000:]
    assert f"the cluster runs Ray {OTHER_RAY}" in lines[0]
    assert f"this machine Ray {ray.__version__}" in lines[0]
    assert cluster.address in lines[0]
