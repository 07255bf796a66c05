"""deploy/k8s validates against the Kubernetes schemas and hangs together.

kubernetes-validate (PyPI) carries the JSON schemas of each Kubernetes
release, so nothing is fetched while testing.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from .helpers import DEPLOY, ROOT, api_default, shm_needed, size_bytes

K8S = DEPLOY / "k8s"
# The oldest release still common in managed clusters, and the newest bundled.
K8S_VERSIONS = ["1.30.0", "1.37.0"]

try:
    import kubernetes_validate
except ImportError:  # pragma: no cover - the message is the point
    kubernetes_validate = None


def manifests() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def documents(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    assert docs, f"{path.name} holds no resource"
    return docs


def resources() -> dict[tuple[str, str], dict[str, Any]]:
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in manifests():
        for doc in documents(path):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in found, f"{key} defined twice"
            found[key] = doc
    return found


@pytest.fixture(scope="module")
def validator() -> Any:
    if kubernetes_validate is None:
        pytest.fail("kubernetes-validate is not installed: run make install-test or deploy/install-tools.sh")
    return kubernetes_validate


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", manifests(), ids=lambda p: p.name)
def test_manifest_matches_the_kubernetes_schema(validator: Any, path: Path, version: str) -> None:
    for doc in documents(path):
        try:
            validator.validate(doc, version, strict=True)
        except validator.SchemaNotFoundError as exc:
            pytest.fail(f"{path.name}: {doc.get('kind')} {doc.get('apiVersion')} has no schema in {version}: {exc}")
        except validator.ValidationError as exc:
            pytest.fail(f"{path.name}: {doc['kind']}/{doc['metadata']['name']} is invalid for {version}: {exc}")


def test_validator_reports_a_bad_manifest(validator: Any) -> None:
    """The check above can fail: a typo'd field and a wrong type are refused."""
    bad = yaml.safe_load("""
apiVersion: apps/v1
kind: Deployment
metadata: {name: x}
spec:
  replicas: two
  selector: {matchLabels: {a: b}}
  template:
    metadata: {labels: {a: b}}
    spec:
      containers: [{name: c, image: i, readinessProb: {}}]
""")
    with pytest.raises(validator.ValidationError):
        validator.validate(bad, K8S_VERSIONS[-1], strict=True)
    bad["spec"]["replicas"] = 2
    with pytest.raises(validator.ValidationError):
        validator.validate(bad, K8S_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    assert sorted(kustomization["resources"]) == sorted(p.name for p in manifests())
    images = {image["name"] for image in kustomization["images"]}
    pods = [doc["spec"]["template"]["spec"] for doc in resources().values() if doc["kind"] in ("Deployment", "Job")]
    used = {c["image"] for pod in pods for c in pod.get("initContainers", []) + pod["containers"]}
    assert used == images, f"containers use {used}, kustomization sets {images}"


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in pod["containers"] if c["name"] == name)


def test_deployment_is_wired_as_documented() -> None:
    found = resources()
    deployment = found[("Deployment", "embsvc")]
    pod = deployment["spec"]["template"]["spec"]
    server = container(pod, "embsvc")

    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1, "one GPU, one engine per pod"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert server[probe]["httpGet"]["path"] == "/health", probe
        assert server[probe]["httpGet"]["port"] == "http", probe
    assert {p["name"]: p["containerPort"] for p in server["ports"]} == {"http": 8000}

    env = {e["name"]: e for e in server["env"]}
    token = env["API_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token == {"name": "embsvc-api-token", "key": "API_TOKEN"}
    assert env["MODEL_PATH"]["value"] == "/app/BGE-M3"
    config_maps = {ref["configMapRef"]["name"] for ref in server["envFrom"]}
    for name in config_maps:
        assert ("ConfigMap", name) in found
        assert "API_TOKEN" not in found[("ConfigMap", name)]["data"], "the token belongs in the Secret"

    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in server["volumeMounts"]}
    shm = volumes[mounts["/dev/shm"]["name"]]["emptyDir"]
    assert shm["medium"] == "Memory"
    assert size_bytes(shm["sizeLimit"]) >= shm_needed(), "a full queue of the longest requests must fit"
    assert size_bytes(shm["sizeLimit"]) < size_bytes(server["resources"]["limits"]["memory"]), "it counts against it"
    model = volumes[mounts["/app/BGE-M3"]["name"]]["persistentVolumeClaim"]["claimName"]
    assert ("PersistentVolumeClaim", model) in found
    job_pod = found[("Job", "bge-m3-download")]["spec"]["template"]["spec"]
    job_claims = {v["persistentVolumeClaim"]["claimName"] for v in job_pod["volumes"] if "persistentVolumeClaim" in v}
    assert job_claims == {model}, "the download Job fills the volume the server reads"
    marker = ".download-complete"
    assert marker in job_pod["containers"][0]["command"][-1]
    assert marker in pod["initContainers"][0]["command"][-1]

    # The image's user (Dockerfile) is the pod's user.
    uid = re.search(r"^ARG APP_UID=(\d+)$", (ROOT / "Dockerfile").read_text(encoding="utf-8"), re.MULTILINE)
    assert uid and pod["securityContext"]["runAsUser"] == int(uid[1])
    assert pod["securityContext"]["runAsNonRoot"] is True
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > 120, "longer than REQUEST_TIMEOUT_S, so requests in flight finish"


def test_service_and_hpa_point_at_the_deployment() -> None:
    found = resources()
    deployment = found[("Deployment", "embsvc")]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    services = [doc for (kind, _), doc in found.items() if kind == "Service"]
    assert services
    for service in services:
        assert service["spec"]["selector"].items() <= labels.items(), service["metadata"]["name"]
        assert all(p["targetPort"] == "http" for p in service["spec"]["ports"])
    pdb = found[("PodDisruptionBudget", "embsvc")]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()

    hpa = found[("HorizontalPodAutoscaler", "embsvc")]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "embsvc")
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    server = container(deployment["spec"]["template"]["spec"], "embsvc")
    for metric in hpa["spec"]["metrics"]:
        if metric["type"] == "Resource":
            name = metric["resource"]["name"]
            assert name in server["resources"]["requests"], f"a {name} target needs a {name} request"


def pod_specs() -> dict[str, dict[str, Any]]:
    return {f"{kind}/{name}": doc["spec"]["template"]["spec"] for (kind, name), doc in resources().items()
            if kind in ("Deployment", "Job")}


def test_no_pod_mounts_a_service_account_token() -> None:
    """Nothing in these pods calls the Kubernetes API: a token there only helps an intruder."""
    specs = pod_specs()
    assert len(specs) == 2, specs.keys()
    for name, pod in specs.items():
        assert pod.get("automountServiceAccountToken") is False, name


def test_the_network_policy_admits_only_the_ingress_controller_prometheus_and_labelled_clients() -> None:
    """In a cluster nothing buffers in front of a pod but the ingress controller: no other pod may
    reach the server unless it is labelled a trusted client (docs/operators.md, "Kubernetes")."""
    found = resources()
    policy = found[("NetworkPolicy", "embsvc")]["spec"]
    labels = found[("Deployment", "embsvc")]["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    peers = []
    for rule in policy["ingress"]:
        assert rule.get("from"), "a rule without 'from' admits everyone"
        assert rule["ports"] == [{"port": "http", "protocol": "TCP"}], rule["ports"]
        peers += rule["from"]
    namespaces = {p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for p in peers
                  if "namespaceSelector" in p}
    assert namespaces == {"ingress-nginx", "monitoring"}
    for peer in peers:
        if "namespaceSelector" not in peer:
            assert peer["podSelector"]["matchLabels"] == {"embsvc-client": "true"}, peer
        assert peer.get("namespaceSelector", {}).get("matchLabels") != {}, "an empty selector admits all namespaces"


def test_the_ingress_terminates_tls_buffers_and_limits_each_client() -> None:
    found = resources()
    service = found[("Service", "embsvc")]
    ports = {p["name"] for p in service["spec"]["ports"]}
    ingresses = [doc for (kind, _), doc in found.items() if kind == "Ingress"]
    assert {i["metadata"]["name"] for i in ingresses} == {"embsvc", "embsvc-metrics"}
    for ingress in ingresses:
        spec = ingress["spec"]
        hosts = {rule["host"] for rule in spec["rules"]}
        assert spec["tls"] and all(t["secretName"] == "embsvc-tls" and set(t["hosts"]) == hosts for t in spec["tls"])
        for rule in spec["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                assert backend["name"] == "embsvc" and backend["port"]["name"] in ports
    main = found[("Ingress", "embsvc")]["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    mib = api_default("MAX_REQUEST_BYTES").split()[0]
    assert main[prefix + "proxy-body-size"] == f"{mib}m"
    assert float(main[prefix + "proxy-read-timeout"]) > float(api_default("REQUEST_TIMEOUT_S"))
    assert main[prefix + "proxy-request-buffering"] == "on"
    assert int(main[prefix + "limit-rps"]) > 0 and int(main[prefix + "limit-connections"]) > 0
    metrics = found[("Ingress", "embsvc-metrics")]
    assert [p["path"] for r in metrics["spec"]["rules"] for p in r["http"]["paths"]] == ["/metrics"]
    assert metrics["metadata"]["annotations"][prefix + "denylist-source-range"] == "0.0.0.0/0,::/0"
