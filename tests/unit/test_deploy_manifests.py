"""deploy/kubernetes and deploy/kuberay, offline: every manifest against Kubernetes' schemas
(kubernetes-validate, strict: unknown fields are errors), the RayCluster against KubeRay's fields,
and what ties the files to each other and to lmaas (ports, probes, settings, Secret keys, the
HPA's metric and the adapter rule that serves it)."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from lmaas.config import Settings, load_settings
from lmaas.telemetry.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
KUBERAY = ROOT / "deploy" / "kuberay"
RAYCLUSTER_SCHEMA = Path(__file__).with_name("data") / "kuberay_raycluster_v1.schema.json"
# The oldest Kubernetes the manifests are written for, and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())
NOT_RESOURCES = {"kustomization.yaml"}
# Read by deploy/docker/entrypoint.py and by the CLI (--key), not by the server's settings.
NON_SETTING_ENV = {"LMAAS_ADMIN_KEY", "LMAAS_API_KEY"}


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def manifest_files() -> list[Path]:
    return sorted(
        p for d in (KUBERNETES, KUBERAY) for p in d.glob("*.yaml") if p.name not in NOT_RESOURCES
    )


def resources() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in manifest_files():
        for doc in documents(path):
            yield path, doc


def the(kind: str, directory: Path) -> dict[str, Any]:
    """The one resource of ``kind`` in ``directory`` (a ConfigMap: lmaas' own, which holds
    lmaas.yaml; prometheus-adapter.yaml has the adapter's)."""
    found = [
        d
        for p in directory.glob("*.yaml")
        for d in documents(p)
        if d.get("kind") == kind and (kind != "ConfigMap" or "lmaas.yaml" in d["data"])
    ]
    assert len(found) == 1, f"{len(found)} {kind} in {directory}"
    return found[0]


def pod_templates() -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod template) of the Deployment and of each RayCluster group."""
    yield "deployment", the("Deployment", KUBERNETES)["spec"]["template"]
    ray = the("RayCluster", KUBERAY)["spec"]
    yield "ray head", ray["headGroupSpec"]["template"]
    for group in ray["workerGroupSpecs"]:
        yield f"ray worker group {group['groupName']}", group["template"]


def containers() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for where, template in pod_templates():
        for container in template["spec"]["containers"]:
            yield where, template, container


def gateway_containers() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """The containers that run `lmaas serve` (the Deployment's and the Ray head's)."""
    for where, template, container in containers():
        if "lmaas serve" in " ".join(container.get("command", []) + container.get("args", [])):
            yield where, template, container


def config_of(directory: Path, tmp_path: Path) -> Settings:
    """The lmaas.yaml of ``directory``'s ConfigMap, loaded as `lmaas serve --config` would."""
    config_map = the("ConfigMap", directory)
    file = tmp_path / "lmaas.yaml"
    file.write_text(config_map["data"]["lmaas.yaml"])
    return load_settings(file)


@pytest.fixture(autouse=True)
def _no_lmaas_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read LMAAS_* variables: none of this machine's may leak into the checks."""
    import os

    for name in list(os.environ):
        if name.startswith("LMAAS_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_kubernetes_resource_validates_strictly(version: str) -> None:
    checked = 0
    for path, doc in resources():
        if doc["kind"] == "RayCluster":
            continue  # a custom resource: test_raycluster_*
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{path.name} {doc['kind']}: {where}: {exc.message}")
        checked += 1
    assert checked >= 12


def test_kubernetes_validate_refuses_an_unknown_field() -> None:
    """The strict check is real: a misspelt field in the Deployment fails it."""
    deployment = the("Deployment", KUBERNETES)
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


def test_raycluster_has_kuberays_fields() -> None:
    schema = json.loads(RAYCLUSTER_SCHEMA.read_text())
    raycluster = the("RayCluster", KUBERAY)
    jsonschema.validate(raycluster, schema)
    broken = json.loads(json.dumps(raycluster))
    broken["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # not a string
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)
    for group in raycluster["spec"]["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_raycluster_pod_templates_validate_strictly(version: str) -> None:
    """KubeRay's pod templates are Kubernetes PodTemplateSpecs: checked as a PodTemplate."""
    for where, template in pod_templates():
        pod_template = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": where.replace(" ", "-")},
            "template": template,
        }
        try:
            kubernetes_validate.validate(pod_template, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}")
    options = the("RayCluster", KUBERAY)["spec"]["autoscalerOptions"]
    autoscaler = {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": "autoscaler"},
        "template": {
            "spec": {
                "containers": [
                    {"name": "autoscaler", "securityContext": options["securityContext"]}
                ]
            }
        },
    }
    kubernetes_validate.validate(autoscaler, version, strict=True)


@pytest.mark.parametrize("directory", [KUBERNETES, KUBERAY])
def test_kustomization_lists_every_resource_file(directory: Path) -> None:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert all((directory / name).is_file() for name in listed)
    # What is left out is left out on purpose: the Secret with placeholders and the adapter's
    # configuration, which belongs to another namespace.
    unlisted = {p.name for p in directory.glob("*.yaml")} - listed - NOT_RESOURCES
    assert unlisted <= {"secret.example.yaml", "prometheus-adapter.yaml"}
    images = {image["name"] for image in kustomization["images"]}
    used = {
        c["image"].partition(":")[0]
        for where, _, c in containers()
        if where.startswith("ray") == (directory == KUBERAY)
    }
    assert used and used <= images


@pytest.mark.parametrize("directory", [KUBERNETES, KUBERAY])
def test_config_map_is_a_valid_lmaas_config(directory: Path, tmp_path: Path) -> None:
    settings = config_of(directory, tmp_path)
    assert settings.host == "0.0.0.0"
    # the models' threads fit in the CPUs the pods give them
    cpus = {
        KUBERNETES: the("Deployment", KUBERNETES)["spec"]["template"]["spec"]["containers"][0],
        KUBERAY: the("RayCluster", KUBERAY)["spec"]["workerGroupSpecs"][0]["template"]["spec"][
            "containers"
        ][0],
    }[directory]["resources"]["limits"]["cpu"]
    for model in settings.models:
        assert 1 <= model.engine.threads <= int(cpus), model.name


def test_kuberay_config_runs_replicas_on_ray(tmp_path: Path) -> None:
    settings = config_of(KUBERAY, tmp_path)
    assert settings.cluster.kind == "ray"
    worker = the("RayCluster", KUBERAY)["spec"]["workerGroupSpecs"][0]["template"]["spec"]
    cache = settings.cluster.node_cache_dir
    mounts = {m["mountPath"] for m in worker["containers"][0]["volumeMounts"]}
    assert cache in mounts


def test_ports_agree(tmp_path: Path) -> None:
    """The Service's targetPort names the container port that lmaas.yaml's port listens on,
    and Prometheus is told the same port."""
    for directory in (KUBERNETES, KUBERAY):
        port = config_of(directory, tmp_path).port
        service = the("Service", directory)
        (service_port,) = service["spec"]["ports"]
        target = service_port["targetPort"]
        selected = [
            (where, template, c)
            for where, template, c in gateway_containers()
            if where.startswith("ray") == (directory == KUBERAY)  # each in its own namespace
            and service["spec"]["selector"].items() <= pod_labels(where, template).items()
        ]
        assert len(selected) == 1, f"{service['metadata']['name']} selects {len(selected)}"
        where, template, container = selected[0]
        by_name = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert by_name[target] == port, where
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(port)
        assert annotations["prometheus.io/path"] == "/metrics"


def pod_labels(where: str, template: dict[str, Any]) -> dict[str, str]:
    """The labels a pod ends up with: its template's, plus KubeRay's on Ray pods."""
    labels = dict(template["metadata"].get("labels", {}))
    if where.startswith("ray"):
        labels["ray.io/cluster"] = the("RayCluster", KUBERAY)["metadata"]["name"]
        labels["ray.io/node-type"] = "head" if where == "ray head" else "worker"
    return labels


def test_probes_use_the_gateways_routes_and_port() -> None:
    for where, _, container in gateway_containers():
        probes = {k: container[k] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
        ports = {p["name"] for p in container["ports"]}
        assert probes["livenessProbe"]["httpGet"]["path"] == "/health", where
        assert probes["startupProbe"]["httpGet"]["path"] == "/health", where
        assert probes["readinessProbe"]["httpGet"]["path"] == "/ready", where
        assert all(p["httpGet"]["port"] in ports for p in probes.values()), where
        # tests/integration/test_deploy_routes.py asks the app itself for these paths


def env_names(container: dict[str, Any]) -> list[str]:
    return [e["name"] for e in container.get("env", [])]


def test_env_variables_are_settings_or_documented(tmp_path: Path) -> None:
    """Each LMAAS_* variable a container sets is a field of lmaas' Settings (the path its
    name spells with `__`) or one of the two read outside them; a server loads with all of
    them set."""
    seen: set[str] = set()
    for _, _, container in containers():
        for name in env_names(container):
            assert name.startswith("LMAAS_"), name
            seen.add(name)
    for name in seen - NON_SETTING_ENV:
        model: Any = Settings
        for part in name.removeprefix("LMAAS_").lower().split("__"):
            assert part in model.model_fields, f"{name}: no setting {part!r}"
            model = model.model_fields[part].annotation
    assert seen >= NON_SETTING_ENV


def test_settings_load_with_the_containers_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """pydantic-settings with the LMAAS_ prefix: the extra variables must not break loading,
    and the ones that are settings must land in them."""
    values = {
        "LMAAS_HOME": str(tmp_path),
        "LMAAS_DATABASE_URL": "postgresql://lmaas:pw@db:5432/lmaas",
        "LMAAS_REDIS_URL": "redis://redis:6379/0",
        "LMAAS_ADMIN_KEY": "lmaas-0123456789ab-" + "a" * 43,
        "LMAAS_API_KEY": "lmaas-0123456789ab-" + "a" * 43,
    }
    names = {n for _, _, c in containers() for n in env_names(c)}
    assert names <= values.keys()
    for name in names:
        monkeypatch.setenv(name, values[name])
    settings = config_of(KUBERNETES, tmp_path)
    assert settings.home == tmp_path
    assert settings.database_url == values["LMAAS_DATABASE_URL"]
    assert settings.redis_url == values["LMAAS_REDIS_URL"]


def test_secret_example_has_every_key_the_pods_read() -> None:
    secret = the("Secret", KUBERNETES)
    keys = set(secret["stringData"])
    for where, _, container in containers():
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref is None:
                continue
            assert ref["name"] == secret["metadata"]["name"], where
            assert ref.get("optional") or ref["key"] in keys, (where, ref["key"])


def test_no_service_links_in_lmaas_pods() -> None:
    """A Service named lmaas-* would otherwise inject LMAAS_..._PORT=tcp://... variables."""
    for where, template in pod_templates():
        assert template["spec"]["enableServiceLinks"] is False, where


def test_pods_run_as_the_images_non_root_user() -> None:
    for where, template, container in containers():
        pod = template["spec"]["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] == 10001, where
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, where
        assert context["capabilities"]["drop"] == ["ALL"], where
        if context.get("readOnlyRootFilesystem"):
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert {"/tmp", "/var/lib/lmaas"} <= mounts, where


def test_config_file_is_mounted_where_the_command_reads_it() -> None:
    for where, template, container in gateway_containers():
        words = shlex.split(" ".join(container.get("command", []) + container.get("args", [])))
        config = Path(words[words.index("--config") + 1])
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(config.parent)]
        (volume,) = [v for v in template["spec"]["volumes"] if v["name"] == mount["name"]]
        config_map = the("ConfigMap", KUBERAY if where.startswith("ray") else KUBERNETES)
        assert volume["configMap"]["name"] == config_map["metadata"]["name"], where
        assert config.name in config_map["data"], where


def exported_metrics() -> set[str]:
    """The sample names the gateway's registry exposes (the gauges under their own names)."""
    registry = Metrics().registry
    return {m.name for m in registry.collect()}


def adapter_rules() -> list[dict[str, Any]]:
    config_map = next(
        d for d in documents(KUBERNETES / "prometheus-adapter.yaml") if d["kind"] == "ConfigMap"
    )
    return list(yaml.safe_load(config_map["data"]["config.yaml"])["rules"])


def adapted_name(rule: dict[str, Any], series: str) -> str:
    """What prometheus-adapter calls ``series`` under ``rule``'s ``name`` (matches/as)."""
    import re

    pattern = rule["name"]["matches"]
    replacement = re.sub(r"\$\{(\d+)\}", r"\\\1", rule["name"]["as"])
    return re.sub(pattern, replacement, series)


def test_hpa_metrics_are_gauges_the_gateway_exports_through_an_adapter_rule() -> None:
    hpa = the("HorizontalPodAutoscaler", KUBERNETES)
    deployment = the("Deployment", KUBERNETES)
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"]
    exported = exported_metrics()
    served: dict[str, dict[str, Any]] = {}
    for rule in adapter_rules():
        series = rule["seriesQuery"].partition("{")[0].strip("'\" ")
        assert series in exported, f"adapter rule for {series}, which lmaas does not export"
        assert {"namespace", "pod"} <= rule["resources"]["overrides"].keys()
        assert "<<.Series>>" in rule["metricsQuery"]
        served[adapted_name(rule, series)] = rule
    metrics = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]]
    assert metrics and all(m in served for m in metrics), (metrics, sorted(served))
    assert all(m["type"] == "Pods" for m in hpa["spec"]["metrics"])


def test_pdb_and_service_select_the_gateway_pods() -> None:
    labels = the("Deployment", KUBERNETES)["spec"]["template"]["metadata"]["labels"]
    pdb = the("PodDisruptionBudget", KUBERNETES)
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert the("Service", KUBERNETES)["spec"]["selector"].items() <= labels.items()
    deployment = the("Deployment", KUBERNETES)
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_termination_grace_outlasts_the_drain(tmp_path: Path) -> None:
    for directory in (KUBERNETES, KUBERAY):
        drain = config_of(directory, tmp_path).shutdown_drain_seconds
        for where, template, _ in gateway_containers():
            if where.startswith("ray") == (directory == KUBERAY):
                # the drain, uvicorn's 5 s margin, the workers' stop and the preStop pause
                assert template["spec"]["terminationGracePeriodSeconds"] >= drain + 15, where


def test_ray_head_starts_ray_then_the_gateway_through_the_entrypoint() -> None:
    raycluster = the("RayCluster", KUBERAY)
    assert raycluster["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"
    head = raycluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    script = head["args"][0]
    assert "KUBERAY_GEN_RAY_START_CMD//--block/" in script
    assert script.index("KUBERAY_GEN_RAY_START_CMD") < script.index("lmaas serve")
    assert "exec python /usr/local/lib/lmaas/entrypoint.py lmaas serve" in script
    assert raycluster["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    for group in raycluster["spec"]["workerGroupSpecs"]:
        worker = group["template"]["spec"]["containers"][0]
        assert "$KUBERAY_GEN_RAY_START_CMD" in worker["args"][0]
