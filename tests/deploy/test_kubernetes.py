"""The Kubernetes manifests in deploy/kubernetes: both overlays render (`kubectl kustomize`,
offline) into objects valid against the Kubernetes 1.30 API schemas in strict mode, a
broken probe is caught, and what they promise matches the server: gRPC health probes on
its scoring port, the image's ports and command, settings the server knows, a termination
grace longer than the server's own, unprivileged containers on read-only roots, and for
`scaled` one Redis shared by three replicas or more."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from service.config.settings import ServeSettings
from service.grpc_api.server import LIVENESS_SERVICE_NAME
from service.observability.metrics import IN_FLIGHT
from tests.tls_certificates import issue_server_certificate
from training.cli.parser import build_parser as build_training_parser
from training.cli.retrain_commands import handle_retrain
from training.config import TrainSettings
from training.registry.signing import generate_key_pair

ROOT = Path(__file__).parents[2]
OVERLAYS = ROOT / "deploy" / "kubernetes" / "overlays"
KUBERNETES = "1.30"
SCORING_PORT, METRICS_PORT, HEALTH_PORT = 50051, 9464, 50052


def _render(overlay: str) -> list[dict[str, Any]]:
    return _render_directory(OVERLAYS / overlay)


def _render_directory(kustomization: Path) -> list[dict[str, Any]]:
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(kustomization)],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    return [document for document in yaml.safe_load_all(rendered) if document]


@pytest.fixture(scope="module", params=["single", "scaled"])
def objects(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return _render(request.param)


def _one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [found] = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def _server(objects: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = _one(objects, "Deployment", "fraud-scoring")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _environment(objects: list[dict[str, Any]]) -> dict[str, str]:
    """The server's FRAUD_* variables with a literal value (the Secret's are left out)."""
    environment = dict(_one(objects, "ConfigMap", "fraud-scoring-settings")["data"])
    environment |= {v["name"]: v["value"] for v in _server(objects)["env"] if "value" in v}
    return environment


def test_every_object_is_valid_for_kubernetes_1_30(objects: list[dict[str, Any]]) -> None:
    for found in objects:
        kubernetes_validate.validate(found, KUBERNETES, strict=True)


def test_a_grpc_probe_without_its_port_is_caught(objects: list[dict[str, Any]]) -> None:
    broken = copy.deepcopy(_one(objects, "Deployment", "fraud-scoring"))
    del broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["port"]
    with pytest.raises(kubernetes_validate.ValidationError, match="'port' is a required"):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


def test_the_server_is_probed_over_grpc_health_on_the_image_s_ports(
    objects: list[dict[str, Any]],
) -> None:
    """grpc.health.v1 on the plaintext health port (the kubelet cannot use the scoring
    port's TLS): readiness on the whole server (a model served), start and liveness on the
    process alone (`liveness`, so that a pod waiting for a model that verifies is not
    restarted in a loop); the ports are the ones the Dockerfile exposes and its command
    listens on."""
    server = _server(objects)
    assert server["readinessProbe"]["grpc"] == {"port": HEALTH_PORT}
    for probe in ("startupProbe", "livenessProbe"):
        assert server[probe]["grpc"] == {"port": HEALTH_PORT, "service": LIVENESS_SERVICE_NAME}
    assert {port["name"]: port["containerPort"] for port in server["ports"]} == {
        "grpc": SCORING_PORT,
        "metrics": METRICS_PORT,
        "health": HEALTH_PORT,
    }
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert f"EXPOSE {SCORING_PORT} {METRICS_PORT} {HEALTH_PORT}" in dockerfile
    assert (
        f'"--port", "{SCORING_PORT}", "--metrics-port", "{METRICS_PORT}", '
        f'"--health-port", "{HEALTH_PORT}"'
    ) in dockerfile
    assert f"service.healthcheck --port {HEALTH_PORT}" in dockerfile
    assert "command" not in server
    assert "args" not in server


def _secrets_as_documented(directory: Path) -> dict[str, str]:
    """The keys of the Secret `fraud-scoring-secrets`, with values made the way
    docs/deployment.md makes them."""
    public_key = generate_key_pair(directory / "keys", "release")[0].public_text
    pos_token_digest = hashlib.sha256(secrets.token_hex(32).encode()).hexdigest()
    callers = [{"name": "pos-backend", "roles": ["score"], "token_sha256": [pos_token_digest]}]
    return {
        "card-token-key": secrets.token_urlsafe(32),
        "callers": json.dumps(callers),
        "trusted-keys": json.dumps([public_key]),
    }


def _mounted_secrets(objects: list[dict[str, Any]], directory: Path) -> dict[str, Path]:
    """Each mount path of a Secret volume, mapped to a directory holding that Secret's
    files as Kubernetes would mount them (the TLS Secret: a certificate and its key)."""
    pod = _one(objects, "Deployment", "fraud-scoring")["spec"]["template"]["spec"]
    secret_volumes = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secret_volumes == {"tls": "fraud-scoring-tls"}
    certificate = issue_server_certificate(directory / "issued")
    mounted = directory / "fraud-scoring-tls"
    mounted.mkdir()
    shutil.copy(certificate.cert_file, mounted / "tls.crt")  # `kubectl create secret tls`
    shutil.copy(certificate.key_file, mounted / "tls.key")
    return {
        mount["mountPath"]: mounted
        for mount in _server(objects)["volumeMounts"]
        if mount["name"] in secret_volumes
    }


def test_the_settings_given_are_settings_the_server_knows(
    objects: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Every FRAUD_* name maps to a setting (a typo would be ignored silently), the values
    are valid, and with the Secrets made as docs/deployment.md makes them, production mode
    (which the manifests turn on) finds nothing to refuse."""
    environment = _environment(objects)
    from_secrets = {
        v["name"]: v["valueFrom"]["secretKeyRef"]
        for v in _server(objects)["env"]
        if "valueFrom" in v
    }
    for name in [*environment, *from_secrets]:
        group, _, field = name.removeprefix("FRAUD_").lower().partition("__")
        if not field:  # a top-level setting: FRAUD_MODE, FRAUD_CARD_TOKEN_KEY
            assert group in ServeSettings.model_fields, name
            continue
        model = ServeSettings.model_fields[group].annotation
        assert model is not None
        assert field in getattr(model, "model_fields", {}), name
    documented = _secrets_as_documented(tmp_path)
    assert {ref["name"] for ref in from_secrets.values()} == {"fraud-scoring-secrets"}
    assert {ref["key"] for ref in from_secrets.values()} == set(documented)
    guide = (ROOT / "docs" / "deployment.md").read_text(encoding="utf-8")
    for key in documented:
        assert f"--from-literal={key}=" in guide or f"--from-file={key}=" in guide, key
    assert "kubectl create secret tls fraud-scoring-tls" in guide
    mounts = _mounted_secrets(objects, tmp_path)
    for name, value in environment.items():
        for mount_path, mounted in mounts.items():
            value = value.replace(mount_path, str(mounted))
        monkeypatch.setenv(name, value)
    for name, ref in from_secrets.items():
        monkeypatch.setenv(name, documented[ref["key"]])
    settings = ServeSettings()
    assert settings.mode == "production"
    assert settings.production_problems() == []
    pod = _one(objects, "Deployment", "fraud-scoring")["spec"]["template"]["spec"]
    pause = int(_server(objects)["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > settings.server.grace_seconds + pause


def test_containers_run_unprivileged_on_a_read_only_root(objects: list[dict[str, Any]]) -> None:
    for found in objects:
        if found["kind"] not in {"Deployment", "StatefulSet"}:
            continue
        pod = found["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert "limits" in container["resources"]
            assert "requests" in container["resources"]


def test_single_keeps_the_lmdb_state_on_a_volume_of_its_own() -> None:
    objects = _render("single")
    deployment = _one(objects, "Deployment", "fraud-scoring")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"  # one pod on the volume
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["state"] == {
        "name": "state",
        "persistentVolumeClaim": {"claimName": "fraud-state"},
    }
    _one(objects, "PersistentVolumeClaim", "fraud-state")
    assert _environment(objects)["FRAUD_STATE__BACKEND"] == "lmdb"


def test_scaled_shares_one_persistent_redis_across_three_replicas_or_more() -> None:
    objects = _render("scaled")
    deployment = _one(objects, "Deployment", "fraud-scoring")
    assert deployment["spec"]["replicas"] >= 3
    environment = _environment(objects)
    assert environment["FRAUD_STATE__BACKEND"] == "redis"
    redis_service = _one(objects, "Service", "fraud-state-redis")
    host = environment["FRAUD_STATE__URL"].removeprefix("redis://").partition(":")[0]
    assert host == redis_service["metadata"]["name"]
    [redis] = _one(objects, "StatefulSet", "fraud-state-redis")["spec"]["template"]["spec"][
        "containers"
    ]
    arguments = " ".join(redis["args"])
    assert "--appendonly yes" in arguments
    assert "--maxmemory-policy volatile-lru" in arguments
    for shared in ("fraud-models", "fraud-records"):
        claim = _one(objects, "PersistentVolumeClaim", shared)
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    pod = deployment["spec"]["template"]["spec"]
    assert {v["name"] for v in pod["volumes"]} == {"models", "records", "state", "tls", "tmp"}
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    for kind in ("decisions", "outcomes"):  # every replica's, for retraining to read
        mount = mounts[f"/var/lib/fraud/{kind}"]
        assert (mount["name"], mount["subPath"]) == ("records", kind)
    budget = _one(objects, "PodDisruptionBudget", "fraud-scoring")
    assert budget["spec"]["minAvailable"] >= 2


def test_scaled_autoscales_on_a_metric_the_server_exports() -> None:
    [in_flight] = IN_FLIGHT.describe()
    objects = _render("scaled")
    autoscaler = _one(objects, "HorizontalPodAutoscaler", "fraud-scoring")
    assert autoscaler["apiVersion"] == "autoscaling/v2"
    assert autoscaler["spec"]["minReplicas"] >= 3
    [pods] = [m["pods"] for m in autoscaler["spec"]["metrics"] if m["type"] == "Pods"]
    assert pods["metric"]["name"] == in_flight.name
    rules = _one(objects, "ConfigMap", "fraud-scoring-adapter-rules")["data"]["rules.yaml"]
    assert in_flight.name in rules


def test_the_service_monitor_scrapes_each_server_once_at_the_alerts_interval(
    tmp_path: Path,
) -> None:
    """The operator's ServiceMonitor (a component added to an overlay) selects exactly one
    Service with its port, that Service reaches the server pods' metrics port, and it
    scrapes as often as the alert rules were written for."""
    components = ROOT / "deploy" / "kubernetes" / "components"
    overlay = {
        "resources": [os.path.relpath(OVERLAYS / "scaled", tmp_path)],
        "components": [os.path.relpath(components / "service-monitor", tmp_path)],
    }
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(overlay), encoding="utf-8")
    objects = _render_directory(tmp_path)
    monitor = _one(objects, "ServiceMonitor", "fraud-scoring")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    [endpoint] = monitor["spec"]["endpoints"]
    wanted = monitor["spec"]["selector"]["matchLabels"]
    [service] = [
        o
        for o in objects
        if o["kind"] == "Service"
        and wanted.items() <= o["metadata"].get("labels", {}).items()
        and endpoint["port"] in {port["name"] for port in o["spec"]["ports"]}
    ]
    [port] = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
    server_ports = {p["name"]: p["containerPort"] for p in _server(objects)["ports"]}
    assert server_ports[port["targetPort"]] == METRICS_PORT
    pods = _one(objects, "Deployment", "fraud-scoring")["spec"]["template"]["metadata"]
    assert service["spec"]["selector"].items() <= pods["labels"].items()
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert endpoint["interval"] == scrape["global"]["scrape_interval"]
    assert endpoint["path"] == "/metrics"
    for found in objects:
        if found["kind"] != "ServiceMonitor":  # a custom resource: no schema offline
            kubernetes_validate.validate(found, KUBERNETES, strict=True)


def test_scaled_retrains_beside_the_servers_on_every_replica_s_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One `fraud-train retrain --watch` pod of the training image: its arguments parse, it
    reads the decisions and outcomes on the very volume and subdirectories the servers
    write, publishes into the registry they follow, signs with a key from a Secret, reads
    drift from a Service that reaches the servers' metrics port, and is no server (no
    Service, budget or autoscaler counts it)."""
    objects = _render("scaled")
    retrain = _one(objects, "Deployment", "fraud-scoring-retrain")
    assert (retrain["spec"]["replicas"], retrain["spec"]["strategy"]["type"]) == (1, "Recreate")
    pod = retrain["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"].startswith("fraud-scoring-training:")
    arguments = build_training_parser().parse_args(container["args"])
    assert arguments.handler is handle_retrain
    assert (arguments.watch, arguments.compact) == (True, True)

    def sources(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
        """Each mount path: the claim or Secret behind it, its subPath, read-only or not."""
        volumes = {v["name"]: v for v in pod["volumes"]}
        found = {}
        for mount in container["volumeMounts"]:
            volume = volumes[mount["name"]]
            source = volume.get("persistentVolumeClaim", {}).get("claimName") or volume.get(
                "secret", {}
            ).get("secretName")
            found[mount["mountPath"]] = (source, mount.get("subPath"), mount.get("readOnly"))
        return found

    server_pod = _one(objects, "Deployment", "fraud-scoring")["spec"]["template"]["spec"]
    servers = sources(server_pod, _server(objects))
    mine = sources(pod, container)
    for log in (arguments.decisions, arguments.outcomes):
        assert mine[str(log)][:2] == servers[str(log)][:2]  # the same claim and subdirectory
        assert mine[str(log)][2] is None  # writable: --compact writes the twins there
    assert mine[str(arguments.registry)] == ("fraud-models", None, None)

    environment = {v["name"]: v["value"] for v in container["env"]}
    key_path = Path(environment["FRAUD_TRAIN_SIGNING_KEY"])
    assert mine[str(key_path.parent)] == ("fraud-scoring-retrain-key", None, True)
    key = generate_key_pair(tmp_path, key_path.stem)[1]
    for name, value in environment.items():
        monkeypatch.setenv(name, value.replace(str(key_path), str(key)))
    settings = TrainSettings()  # every FRAUD_TRAIN_* name and value is valid
    [metrics_url] = settings.triggers.metrics_urls
    address = urlsplit(metrics_url)
    service = _one(objects, "Service", str(address.hostname))
    [port] = [p for p in service["spec"]["ports"] if p["port"] == address.port]
    assert {p["name"]: p["containerPort"] for p in _server(objects)["ports"]}[
        port["targetPort"]
    ] == METRICS_PORT

    labels = retrain["spec"]["template"]["metadata"]["labels"]
    for found in objects:
        if found is retrain:
            continue
        selector = found.get("spec", {}).get("selector", {})
        wanted = selector.get("matchLabels", selector)
        assert not (wanted and wanted.items() <= labels.items()), found["metadata"]["name"]
    autoscaler = _one(objects, "HorizontalPodAutoscaler", "fraud-scoring")
    assert autoscaler["spec"]["scaleTargetRef"]["name"] == "fraud-scoring"
