"""Cluster configs parse and hold what Ray's schema and the KubeRay CRDs require."""

from __future__ import annotations

import copy
import shlex
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from distmap.config import load_config

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
RAY_VERSION = "2.60.0"


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def test_ray_up_config_passes_rays_own_schema() -> None:
    config = load("aws.yaml")
    validate_config(prepare_config(copy.deepcopy(config)))
    assert config["head_node_type"] in config["available_node_types"]
    assert {"worker.cpu", "worker.gpu"} <= set(config["available_node_types"])
    assert RAY_VERSION in config["docker"]["image"]
    assert RAY_VERSION in config["docker"]["worker_image"]
    broken = copy.deepcopy(config)
    broken["available_node_types"]["worker.gpu"]["instance"] = "typo"
    with pytest.raises(Exception, match="Additional properties"):
        validate_config(prepare_config(broken))


def pod_specs(cluster_spec: dict) -> list[dict]:
    groups = [cluster_spec["headGroupSpec"], *cluster_spec["workerGroupSpecs"]]
    return [g["template"]["spec"] for g in groups]


def check_cluster_spec(spec: dict) -> None:
    assert spec["rayVersion"] == RAY_VERSION
    assert "rayStartParams" in spec["headGroupSpec"]
    for group in spec["workerGroupSpecs"]:
        assert {"groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template"} <= set(group)
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    for pod in pod_specs(spec):
        volumes = {v["name"] for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            assert container["name"]
            assert container["image"]
            assert container["resources"]["limits"] == container["resources"]["requests"]
            assert {m["name"] for m in container.get("volumeMounts", [])} <= volumes


def test_kuberay_raycluster() -> None:
    manifest = load("raycluster.yaml")
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayCluster")
    check_cluster_spec(manifest["spec"])
    gpu = [g for g in manifest["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu"]
    assert gpu
    assert "nvidia.com/gpu" in gpu[0]["template"]["spec"]["containers"][0]["resources"]["limits"]


def test_kuberay_rayjob_entrypoint_runs_a_real_config() -> None:
    manifest = load("rayjob.yaml")
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayJob")
    check_cluster_spec(manifest["spec"]["rayClusterSpec"])
    words = shlex.split(manifest["spec"]["entrypoint"].split("&&")[-1])
    script, config, *rest = words[1:]
    root = CLUSTER.parent
    assert (root / script).is_file()
    overrides = [rest[i + 1] for i, w in enumerate(rest) if w == "--set"]
    cfg = load_config(root / config, overrides)
    assert cfg.scale.workers >= 1
    assert cfg.scale.address == "auto"
