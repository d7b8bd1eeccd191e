"""deploy/k8s: the manifests parse, and their probes, ports, variables and
timings match the settings and the CLI that exist."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.deploy.specs import (
    K8S,
    SETTING_NAMES,
    TEST_SECRETS,
    dockerfile_stages,
    k8s_documents,
    kustomization,
    one,
    parse_serve_args,
    settings_for,
)
from wsnode.auth import Authenticator
from wsnode.errors import SettingsError
from wsnode.settings import NodeSettings

OPTIONAL = {"servicemonitor.yaml"}  # needs the Prometheus Operator's CRD


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return k8s_documents()


@pytest.fixture(scope="module")
def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def pod_env(docs: list[dict[str, Any]], container: dict[str, Any],
            secrets: dict[str, str] | None = None) -> dict[str, str]:
    """The WSNODE_* environment of a pod: envFrom (ConfigMap, Secret), then env
    (the pod id from the downward API stands in as the pod's name)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
        if "secretRef" in source:
            secret = one(docs, "Secret", source["secretRef"]["name"])
            env.update(secret.get("stringData", {}))
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", "wsnode-5d8f7c9b4-x2x7q")
    env.update(secrets or {})
    return env


def settings(docs: list[dict[str, Any]], container: dict[str, Any]) -> NodeSettings:
    return settings_for(pod_env(docs, container, TEST_SECRETS), container.get("args", []))


def test_every_manifest_parses_and_kustomization_lists_them() -> None:
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization()["resources"]) == files - OPTIONAL
    for doc in k8s_documents(sorted(files)):
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"]
    kinds = {d["kind"] for d in k8s_documents()}
    assert kinds == {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap", "Secret"}


def test_every_variable_is_a_setting(docs: list[dict[str, Any]],
                                     container: dict[str, Any]) -> None:
    env = pod_env(docs, container)
    assert set(env) <= SETTING_NAMES, set(env) - SETTING_NAMES
    parse_serve_args(container.get("args", []))  # options that exist
    assert not container.get("command"), "the image's entrypoint: wsnode serve"
    s = settings(docs, container)
    assert s.host == "0.0.0.0" and s.cluster


def test_pod_id_is_the_pod_name(container: dict[str, Any]) -> None:
    (pod_id,) = [e for e in container["env"] if e["name"] == "WSNODE_POD_ID"]
    assert pod_id["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_placeholder_secrets_refuse_to_start(docs: list[dict[str, Any]],
                                             container: dict[str, Any]) -> None:
    """Applied as shipped, a pod exits 2 naming the setting instead of running with a
    guessable key."""
    env = pod_env(docs, container)
    with pytest.raises(SettingsError, match="WSNODE_API_KEY"):
        settings_for(env, container.get("args", []))
    env["WSNODE_API_KEY"] = TEST_SECRETS["WSNODE_API_KEY"]
    with pytest.raises(SettingsError, match="WSNODE_JWT_SECRET"):
        Authenticator(settings_for(env, container.get("args", [])))
    Authenticator(settings(docs, container))


def test_probes_and_ports_match_the_pod(docs: list[dict[str, Any]],
                                        container: dict[str, Any]) -> None:
    s = settings(docs, container)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"ws": s.port, "admin": s.admin_port}
    ready, live = container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
    assert (ready["path"], ports.get(ready["port"], ready["port"])) == ("/readyz", s.admin_port)
    assert (live["path"], ports.get(live["port"], live["port"])) == ("/healthz", s.admin_port)
    assert container["readinessProbe"]["failureThreshold"] == 1, "draining leaves at once"
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == s.admin_port
    assert annotations["prometheus.io/path"] == "/metrics"


def test_rolling_update_lets_the_drain_finish(docs: list[dict[str, Any]],
                                              container: dict[str, Any]) -> None:
    deployment = one(docs, "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    s = settings(docs, container)
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    grace = spec["terminationGracePeriodSeconds"]
    assert grace > float(pre_stop[1]) + s.drain_timeout, (grace, s.drain_timeout)
    assert s.drain_over < s.drain_timeout
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0 and rolling["maxSurge"] >= 1
    assert deployment["spec"]["replicas"] >= 2


def test_runs_as_the_image_user(docs: list[dict[str, Any]], container: dict[str, Any]) -> None:
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    user = dockerfile_stages()[-1].last("USER") or ""
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert str(spec["securityContext"]["runAsUser"]) == user.split(":")[0]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    images = {i["name"] for i in kustomization().get("images", [])}
    assert container["image"] in images


def test_services_budget_and_monitor_select_the_pods(docs: list[dict[str, Any]],
                                                     container: dict[str, Any]) -> None:
    deployment = one(docs, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    port_names = {p["name"] for p in container["ports"]}
    services = [d for d in docs if d["kind"] == "Service"]
    for service in services:
        assert service["spec"]["selector"].items() <= labels.items()
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names
    public = one(docs, "Service", "wsnode")
    assert [p["targetPort"] for p in public["spec"]["ports"]] == ["ws"]
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"].get("maxUnavailable") == 1 or "minAvailable" in pdb["spec"]

    monitor = yaml.safe_load((K8S / "servicemonitor.yaml").read_text())
    (admin,) = [s for s in services
                if monitor["spec"]["selector"]["matchLabels"].items()
                <= s["metadata"]["labels"].items()]
    (endpoint,) = monitor["spec"]["endpoints"]
    (port,) = [p for p in admin["spec"]["ports"] if p["name"] == endpoint["port"]]
    assert port["targetPort"] == "admin" and endpoint["path"] == "/metrics"


def test_kustomize_builds() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed")
    done = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    built = [d for d in yaml.safe_load_all(done.stdout) if d]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in built) == sorted(
        (d["kind"], d["metadata"]["name"]) for d in k8s_documents())


def test_manifests_match_the_kubernetes_schemas() -> None:
    validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate not installed")
    for doc in k8s_documents():
        validate.validate(doc, validate.latest_version(), strict=True)
