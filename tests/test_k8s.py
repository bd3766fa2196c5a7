"""k8s/: the KubeRay manifests use only fields KubeRay's ray.io/v1 API defines, agree with each
other, the image and this Ray; k8s/study.sh keeps a study in object storage and resumes it.

No Kubernetes here: the fields are checked against lists taken from KubeRay v1.7.0 (tag
v1.7.0, commit 59d663aeec13760646da3db9c1cf8cfe883e30b7, 2026-08-19): the openAPIV3Schema of
version v1 in ray-operator/config/crd/bases/ray.io_rayclusters.yaml and ray.io_rayjobs.yaml
(the CRDs the operator installs; docs/reference/api.md documents the same types,
ray-operator/apis/ray/v1/raycluster_types.go and rayjob_types.go define them). The pod
template's fields are Kubernetes' core/v1 ones as that CRD embeds them.
"""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import yaml

from hpo.cli import build_parser

ROOT = Path(__file__).parents[1]
K8S = ROOT / "k8s"
TINY = ROOT / "tests/spaces/tiny.py"

# Each object: {field: what is under it}. A dict is an object whose fields must be among its
# keys; [dict] a list of such objects; ANY a map or value the CRD leaves open (labels,
# rayStartParams, resource quantities, strings).
ANY = None
CONTAINER = {
    "args": ANY, "command": ANY, "env": ANY, "image": ANY, "imagePullPolicy": ANY,
    "lifecycle": ANY, "livenessProbe": ANY, "name": ANY, "readinessProbe": ANY,
    "resizePolicy": ANY, "restartPolicy": ANY, "restartPolicyRules": ANY,
    "securityContext": ANY, "startupProbe": ANY, "stdin": ANY, "stdinOnce": ANY,
    "terminationMessagePath": ANY, "terminationMessagePolicy": ANY, "tty": ANY,
    "volumeDevices": ANY, "volumeMounts": ANY, "workingDir": ANY,
    "envFrom": [{"configMapRef": ANY, "prefix": ANY,
                 "secretRef": {"name": ANY, "optional": ANY}}],
    "ports": [{"containerPort": ANY, "hostIP": ANY, "hostPort": ANY, "name": ANY,
               "protocol": ANY}],
    "resources": {"claims": ANY, "limits": ANY, "requests": ANY},
}
POD_SPEC = {
    **{field: ANY for field in (
        "activeDeadlineSeconds", "affinity", "automountServiceAccountToken", "dnsConfig",
        "dnsPolicy", "enableServiceLinks", "ephemeralContainers", "hostAliases", "hostIPC",
        "hostNetwork", "hostPID", "hostUsers", "hostname", "hostnameOverride",
        "imagePullSecrets", "initContainers", "nodeName", "nodeSelector", "os", "overhead",
        "preemptionPolicy", "priority", "priorityClassName", "readinessGates",
        "resourceClaims", "resources", "restartPolicy", "runtimeClassName", "schedulerName",
        "schedulingGates", "schedulingGroup", "securityContext", "serviceAccount",
        "serviceAccountName", "setHostnameAsFQDN", "shareProcessNamespace", "subdomain",
        "terminationGracePeriodSeconds", "topologySpreadConstraints", "volumes")},
    "containers": [CONTAINER],
    "tolerations": [{"effect": ANY, "key": ANY, "operator": ANY, "tolerationSeconds": ANY,
                     "value": ANY}],
}
TEMPLATE = {"metadata": {"annotations": ANY, "finalizers": ANY, "labels": ANY, "name": ANY,
                         "namespace": ANY},
            "spec": POD_SPEC}
HEAD_GROUP = {"enableIngress": ANY, "headService": ANY, "ingressOptions": ANY, "labels": ANY,
              "rayStartParams": ANY, "resources": ANY, "serviceType": ANY,
              "template": TEMPLATE}
WORKER_GROUP = {"groupName": ANY, "idleTimeoutSeconds": ANY, "labels": ANY,
                "maxReplicas": ANY, "minReplicas": ANY, "numOfHosts": ANY, "priority": ANY,
                "rayStartParams": ANY, "replicas": ANY, "resources": ANY,
                "scaleStrategy": ANY, "suspend": ANY, "template": TEMPLATE}
CLUSTER_SPEC = {
    "authOptions": {"enableK8sTokenAuth": ANY, "mode": ANY, "secretName": ANY},
    "autoscalerOptions": {field: ANY for field in (
        "args", "command", "env", "envFrom", "idleTimeoutSeconds", "image", "imagePullPolicy",
        "resources", "securityContext", "upscalingMode", "version", "volumeMounts")},
    "enableInTreeAutoscaling": ANY, "gcsFaultToleranceOptions": ANY,
    "headGroupSpec": HEAD_GROUP, "headServiceAnnotations": ANY, "historyServerOptions": ANY,
    "managedBy": ANY, "networkPolicy": ANY, "rayVersion": ANY, "suspend": ANY,
    "tlsOptions": ANY, "upgradeStrategy": ANY, "workerGroupSpecs": [WORKER_GROUP],
}
JOB_SPEC = {
    **{field: ANY for field in (
        "activeDeadlineSeconds", "backoffLimit", "clusterSelector", "deletionStrategy",
        "entrypoint", "entrypointNumCpus", "entrypointNumGpus", "entrypointResources",
        "jobId", "managedBy", "metadata", "preRunningDeadlineSeconds", "runtimeEnvYAML",
        "shutdownAfterJobFinishes", "submissionMode", "submitterConfig",
        "submitterPodTemplate", "suspend", "ttlSecondsAfterFinished")},
    "rayClusterSpec": CLUSTER_SPEC,
}
RESOURCE = {"apiVersion": ANY, "kind": ANY, "metadata": ANY, "spec": ANY, "status": ANY}
SPECS = {"RayCluster": CLUSTER_SPEC, "RayJob": JOB_SPEC}
# the CRDs' enums and required fields, for the fields used here
ENUMS = {("autoscalerOptions", "upscalingMode"): {"Default", "Aggressive", "Conservative"},
         ("autoscalerOptions", "version"): {"v1", "v2"},
         ("authOptions", "mode"): {"disabled", "token"},
         ("submissionMode",): {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}}
REQUIRED = {"headGroupSpec": {"template"},
            "workerGroupSpecs": {"groupName", "minReplicas", "maxReplicas", "template"}}


def unknown_fields(value, schema, path="") -> list[str]:
    """The paths in `value` that `schema` does not define."""
    if schema is ANY:
        return []
    if isinstance(schema, list):
        return [bad for i, item in enumerate(value)
                for bad in unknown_fields(item, schema[0], f"{path}[{i}]")]
    return [bad for key, item in value.items()
            for bad in ([f"{path}.{key}"] if key not in schema
                        else unknown_fields(item, schema[key], f"{path}.{key}"))]


def manifest(name: str) -> dict:
    docs = list(yaml.safe_load_all((K8S / name).read_text()))
    assert len(docs) == 1, f"{name}: one resource per file"
    return docs[0]


@pytest.fixture(scope="module")
def cluster() -> dict:
    return manifest("raycluster.yaml")


@pytest.fixture(scope="module")
def job() -> dict:
    return manifest("rayjob.yaml")


@pytest.mark.parametrize("name, kind", [("raycluster.yaml", "RayCluster"),
                                        ("rayjob.yaml", "RayJob")])
def test_uses_only_fields_of_kuberays_v1_api(name, kind):
    resource = manifest(name)
    assert (resource["apiVersion"], resource["kind"]) == ("ray.io/v1", kind)
    assert unknown_fields(resource, {**RESOURCE, "spec": SPECS[kind]}) == []
    for path, allowed in ENUMS.items():
        value = resource["spec"]
        for key in path:
            value = value.get(key, {}) if isinstance(value, dict) else {}
        assert value == {} or value in allowed, (path, value)


@pytest.mark.parametrize("name, misspell, path", [
    ("raycluster.yaml", lambda s: s["workerGroupSpecs"][0].update(minReplica=0),
     ".spec.workerGroupSpecs[0].minReplica"),
    ("raycluster.yaml", lambda s: s["headGroupSpec"]["template"]["spec"]["containers"][0]
     .update(resource={}), ".spec.headGroupSpec.template.spec.containers[0].resource"),
    ("rayjob.yaml", lambda s: s.update(entryPoint="hpo"), ".spec.entryPoint"),
])
def test_a_misspelt_field_is_found(name, misspell, path):
    resource = manifest(name)
    misspell(resource["spec"])
    assert unknown_fields(resource, {**RESOURCE, "spec": SPECS[resource["kind"]]}) == [path]


def test_cluster_has_its_required_fields_a_cpu_head_and_an_autoscaled_gpu_group(cluster):
    spec = cluster["spec"]
    head, workers = spec["headGroupSpec"], spec["workerGroupSpecs"]
    assert REQUIRED["headGroupSpec"] <= set(head)
    assert all(REQUIRED["workerGroupSpecs"] <= set(group) for group in workers)
    # the head runs the search driver and no trial
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert "nvidia.com/gpu" not in str(head["template"])
    # the GPU group starts empty and the autoscaler grows it within its bounds
    assert spec["enableInTreeAutoscaling"] is True
    gpu = [g for g in workers if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]
           ["resources"]["limits"]]
    assert gpu, "a worker group with GPUs"
    for group in gpu:
        assert 0 == group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]
        assert group["maxReplicas"] >= 1


def test_one_image_with_this_ray_everywhere(cluster):
    templates = [cluster["spec"]["headGroupSpec"]["template"],
                 *(g["template"] for g in cluster["spec"]["workerGroupSpecs"])]
    images = {c["image"] for t in templates for c in t["spec"]["containers"]}
    assert len(images) == 1, images
    # the Dockerfile builds on Ray's image of this Ray; rayVersion says the same to KubeRay
    base = re.search(r"^FROM rayproject/ray:(\S+)", (K8S / "Dockerfile").read_text(), re.M)
    assert base and base.group(1).startswith(f"{ray.__version__}-py")
    assert cluster["spec"]["rayVersion"] == ray.__version__


def test_the_job_runs_one_hpo_search_on_that_cluster(cluster, job):
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[:2] == ["bash", "/home/ray/hpo/k8s/study.sh"]  # the image's copy of k8s/
    store, space, *options = words[2:]
    assert re.match(r"s3://", store)
    assert (ROOT / space).is_file()
    # what study.sh passes to `hpo search` is a command hpo accepts
    args = build_parser().parse_args(["search", "--storage-path", f"{store}/ray_results",
                                      space, *options])
    assert args.address == "auto" and args.data


@pytest.mark.cluster
def test_study_sh_keeps_the_study_in_the_store_and_resumes_from_it(tiny_parquet, tmp_path):
    """file:// stands in for s3://: the same pyarrow.fs calls, on this disk."""
    store = tmp_path / "store"
    work = tmp_path / "work"
    (work / "k8s").mkdir(parents=True)
    (work / "k8s/study.sh").write_text((K8S / "study.sh").read_text())
    run = ["bash", str(work / "k8s/study.sh"), store.as_uri(), str(TINY),
           "--data", str(tiny_parquet), "--trials", "2", "--num-cpus", "2"]

    # hpo's environment active, as in the image: `hpo` and `python` on PATH
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    first = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=600)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    stored = store / "results/tiny"
    assert len((stored / "leaderboard.csv").read_text().splitlines()) == 3  # header, 2 trials
    assert (stored / "study.db").is_file() and (store / "ray_results/tiny").is_dir()

    # a new head: no results/ on its disk; the study comes back from the store, complete
    subprocess.run(["rm", "-rf", str(work / "results")], check=True)
    again = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "this study is complete" in again.stdout
    assert (work / "results/tiny/leaderboard.csv").read_bytes() == \
        (stored / "leaderboard.csv").read_bytes()


def test_study_sh_needs_a_store_and_a_space(tmp_path):
    found = subprocess.run(["bash", str(K8S / "study.sh"), "s3://bucket"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
    assert found.returncode == 2 and len(found.stderr.strip().splitlines()) == 1
