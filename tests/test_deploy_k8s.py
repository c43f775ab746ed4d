"""The Kubernetes manifests (deploy/k8s/), checked as far as a machine without a cluster allows:
each resource validated against the Kubernetes API schemas (kubernetes-validate, strict: an unknown
or misspelt field fails), and their values held to the service they deploy, as
tests/test_deploy_files.py does for compose: environment names that exist in app/settings.py,
a termination grace period longer than the preStop pause plus DRAIN_SECONDS, probes on the port the
process listens on, the Dockerfile's image, user and command, selectors that select, and resources
that fit the benchmark's memory per connection."""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from app import cli
from app.settings import Settings
from tests.conftest import skip_unless_ci

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
BENCH_RESULTS = ROOT / "bench" / "results" / "results.json"
SETTINGS_ENV = {name.upper() for name in Settings.model_fields}
# the oldest Kubernetes minor still commonly run (autoscaling/v2 and policy/v1 are GA long before
# it) and the newest the validator knows
KUBERNETES_VERSIONS = ("1.29.0", "latest")
SECRETS = {"JWT_SECRET", "VAPID_PRIVATE_KEY", "DATABASE_URL", "REDIS_URL"}
MIB = 1024 * 1024


def load_all() -> list[tuple[str, dict[str, Any]]]:
    return [(path.name, doc) for path in sorted(K8S.glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.fixture(scope="module")
def manifests() -> list[tuple[str, dict[str, Any]]]:
    return load_all()


def one(manifests: list[tuple[str, dict[str, Any]]], kind: str, name: str) -> dict[str, Any]:
    found = [doc for _, doc in manifests if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r} in deploy/k8s/, found {len(found)}"
    return found[0]


def container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "one process per pod"
    return containers[0]


def dockerfile() -> dict[str, Any]:
    """What the manifests must agree with: the CMD, ENV, EXPOSE and the user's uid."""
    text = DOCKERFILE.read_text()
    joined = re.sub(r"\\\n\s*", " ", text)  # continuation lines
    env: dict[str, str] = {}
    for line in joined.splitlines():
        if line.startswith("ENV "):
            env.update(dict(pair.split("=", 1) for pair in shlex.split(line[4:])))
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", joined, re.MULTILINE).group(1))  # type: ignore[union-attr]
    uid = int(re.search(r"useradd [^\n]*--uid (\d+)", joined).group(1))  # type: ignore[union-attr]
    expose = [int(port) for port in re.findall(r"^EXPOSE (\d+)$", joined, re.MULTILINE)]
    return {"env": env, "cmd": cmd, "uid": uid, "expose": expose}


def quantity(value: str) -> float:
    """A Kubernetes quantity (the suffixes these manifests use) in bytes or cores."""
    units = {"Ki": 1024, "Mi": MIB, "Gi": 1024 * MIB, "m": 0.001}
    for suffix, factor in units.items():
        if str(value).endswith(suffix):
            return float(str(value)[: -len(suffix)]) * factor
    return float(value)


def config(manifests: list[tuple[str, dict[str, Any]]]) -> dict[str, str]:
    return one(manifests, "ConfigMap", "forge-realtime")["data"]


def setting(manifests: list[tuple[str, dict[str, Any]]], name: str) -> Any:
    """A setting as the pods get it: the ConfigMap's value, else the default."""
    data = config(manifests)
    field = Settings.model_fields[name.lower()]
    return type(field.default)(data[name]) if name in data else field.default


# --------------------------------------------------------------------------------------------
# schema validation
# --------------------------------------------------------------------------------------------


def _validator() -> Any:
    try:
        import kubernetes_validate
    except ImportError:
        skip_unless_ci("kubernetes-validate is missing: pip install -c constraints.txt -e '.[dev]'")
    return kubernetes_validate


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schemas(manifests: list[tuple[str, dict[str, Any]]],
                                                                 version: str) -> None:
    kv = _validator()
    target = kv.latest_version() if version == "latest" else version
    failures = []
    for filename, doc in manifests:
        try:
            kv.validate(doc, target, strict=True)
        except (kv.ValidationError, kv.SchemaNotFoundError) as exc:
            failures.append(f"{filename}: {doc['kind']}/{doc['metadata']['name']}: {getattr(exc, 'message', exc)}")
    assert not failures, "\n".join(failures)


def test_a_broken_manifest_fails_validation(manifests: list[tuple[str, dict[str, Any]]]) -> None:
    """The validator is no rubber stamp: a misspelt field and a wrong type are refused."""
    kv = _validator()
    deployment = one(manifests, "Deployment", "forge-realtime")
    misspelt = copy.deepcopy(deployment)
    pod = misspelt["spec"]["template"]["spec"]
    pod["terminationGracePeriod"] = pod.pop("terminationGracePeriodSeconds")
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"
    for broken in (misspelt, wrong_type):
        with pytest.raises(kv.ValidationError):
            kv.validate(broken, kv.latest_version(), strict=True)


def test_the_resources_are_all_there(manifests: list[tuple[str, dict[str, Any]]]) -> None:
    kinds = sorted((doc["kind"], doc["metadata"]["name"]) for _, doc in manifests)
    assert kinds == sorted([
        ("ConfigMap", "forge-realtime"), ("Secret", "forge-realtime"),
        ("Deployment", "forge-realtime"), ("Deployment", "forge-realtime-ingest"),
        ("Service", "forge-realtime"), ("HorizontalPodAutoscaler", "forge-realtime"),
        ("PodDisruptionBudget", "forge-realtime"), ("PodDisruptionBudget", "forge-realtime-ingest"),
        ("Job", "forge-realtime-migrate"),
    ])
    for _, doc in manifests:
        assert "namespace" not in doc["metadata"], "namespace-free: kubectl apply -n <yours>"


# --------------------------------------------------------------------------------------------
# agreement with the settings
# --------------------------------------------------------------------------------------------


def workloads(manifests: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [doc for _, doc in manifests if doc["kind"] in ("Deployment", "Job")]


def test_environment_names_are_settings_and_come_from_the_configmap_and_secret(
        manifests: list[tuple[str, dict[str, Any]]]) -> None:
    data = config(manifests)
    secret = one(manifests, "Secret", "forge-realtime")["stringData"]
    unknown = (set(data) | set(secret)) - SETTINGS_ENV
    assert not unknown, f"{sorted(unknown)} are not in app/settings.py"
    assert set(secret) == SECRETS
    assert not set(data) & SECRETS, "secrets belong in the Secret, not the ConfigMap"
    for workload in workloads(manifests):
        name = workload["metadata"]["name"]
        spec = container(workload)
        assert not set(v["name"] for v in spec.get("env", [])) - SETTINGS_ENV, name
        sources = {(kind, ref["name"]) for item in spec["envFrom"] for kind, ref in item.items()}
        assert sources == {("configMapRef", "forge-realtime"), ("secretRef", "forge-realtime")}, name


def test_the_configmap_values_are_valid_settings(manifests: list[tuple[str, dict[str, Any]]]) -> None:
    data = config(manifests)
    built = Settings(_env_file=None, jwt_secret="x" * 48, **{k.lower(): v for k, v in data.items()})  # type: ignore[call-arg]
    assert built.demo_enabled is False
    assert built.ingest_drain is False, "the ingest Deployment drains; serving pods stay out of it"


def test_pods_keep_idle_connections_longer_than_an_ingress_reuses_them(manifests: list[tuple[str, dict[str, Any]]]) -> None:
    # ingress-nginx's upstream-keepalive-timeout and an AWS ALB's idle timeout are 60 s by default
    assert setting(manifests, "HTTP_KEEPALIVE_SECONDS") > 60


def test_the_secret_is_a_template_of_placeholders(manifests: list[tuple[str, dict[str, Any]]]) -> None:
    secret = one(manifests, "Secret", "forge-realtime")
    assert "data" not in secret, "no base64 values: a template holds placeholders only"
    for name, value in secret["stringData"].items():
        assert re.fullmatch(r"<[^<>]+>", value), f"{name}: a placeholder like <...>, never a real value"


def test_the_grace_period_outlasts_the_prestop_pause_and_the_drain(manifests: list[tuple[str, dict[str, Any]]]) -> None:
    pod = one(manifests, "Deployment", "forge-realtime")["spec"]["template"]["spec"]
    drain = setting(manifests, "DRAIN_SECONDS")
    pre_stop = container(one(manifests, "Deployment", "forge-realtime"))["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep", pre_stop
    pause = float(pre_stop[1])
    # a few seconds more than the drain (README "Graceful drain"): after it the app still shuts down
    assert pod["terminationGracePeriodSeconds"] >= pause + drain + 3, (pod["terminationGracePeriodSeconds"], pause, drain)
    compose = yaml.safe_load(COMPOSE.read_text())
    compose_grace = int(compose["services"]["realtime"]["stop_grace_period"].rstrip("s"))
    assert pod["terminationGracePeriodSeconds"] - pause >= compose_grace, "no shorter than compose's stop timeout"


def test_probes_ask_the_port_the_process_listens_on(manifests: list[tuple[str, dict[str, Any]]]) -> None:
    deployment = one(manifests, "Deployment", "forge-realtime")
    spec = container(deployment)
    ports = {port["name"]: port["containerPort"] for port in spec["ports"]}
    listening = setting(manifests, "PORT")
    assert listening == int(dockerfile()["env"]["PORT"]) and dockerfile()["expose"] == [listening]
    assert ports == {"http": listening}
    expected = {"readinessProbe": "/readyz", "livenessProbe": "/healthz", "startupProbe": "/healthz"}
    for probe, path in expected.items():
        get = spec[probe]["httpGet"]
        assert get["path"] == path, probe
        assert ports.get(get["port"], get["port"]) == listening, probe
    # /readyz gives the engine and the database 2 s each, one after the other (app/api/operators.py)
    assert spec["readinessProbe"]["timeoutSeconds"] >= 5
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == listening and annotations["prometheus.io/path"] == "/metrics"
    service = one(manifests, "Service", "forge-realtime")
    assert [port["targetPort"] for port in service["spec"]["ports"]] == ["http"]
    assert service["spec"].get("sessionAffinity", "None") == "None", "no sticky sessions"


def test_images_users_and_commands_match_the_dockerfile(manifests: list[tuple[str, dict[str, Any]]],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    built = dockerfile()
    images = set()
    for workload in workloads(manifests):
        name = workload["metadata"]["name"]
        pod = workload["spec"]["template"]["spec"]
        spec = container(workload)
        images.add(spec["image"])
        assert pod["securityContext"]["runAsUser"] == built["uid"] and pod["securityContext"]["runAsNonRoot"], name
        assert spec["securityContext"]["readOnlyRootFilesystem"], name
        assert spec["command"][:3] == ["python", "-m", "app"], name
        mounts = {mount["mountPath"] for mount in spec["volumeMounts"]}
        assert "/tmp" in mounts, name
        if workload["kind"] == "Deployment":
            assert built["env"]["DATA_DIR"] in mounts, f"{name}: DATA_DIR must be writable"
    assert len(images) == 1, f"one image for every workload: {images}"
    repository, _, tag = images.pop().rpartition(":")
    assert repository.rsplit("/", 1)[-1] == "forge-realtime", "the image the Dockerfile builds (docker build -t forge-realtime)"
    assert tag and tag != "latest", "pin the image tag"

    server = container(one(manifests, "Deployment", "forge-realtime"))
    assert server["command"] == built["cmd"], "the Dockerfile's CMD"
    migrate = container(one(manifests, "Job", "forge-realtime-migrate"))
    compose = yaml.safe_load(COMPOSE.read_text())
    assert migrate["command"] == compose["services"]["migrate"]["command"] == ["python", "-m", "app", "migrate"]
    assert one(manifests, "Job", "forge-realtime-migrate")["spec"]["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")

    # every command parses as app/cli.py's (each subcommand's function replaced by a recorder)
    ran: dict[str, Any] = {}
    for command in ("serve", "ingest", "migrate"):
        monkeypatch.setattr(cli, command, lambda settings, args, command=command: ran.setdefault(command, args))
    for workload in workloads(manifests):
        cli.main(container(workload)["command"][3:])
    assert set(ran) == {"serve", "ingest", "migrate"}
    ingest = one(manifests, "Deployment", "forge-realtime-ingest")
    ingest_ports = {port["name"]: port["containerPort"] for port in container(ingest)["ports"]}
    assert ran["ingest"].metrics_port == ingest_ports["metrics"]
    assert container(ingest)["livenessProbe"]["httpGet"]["port"] == "metrics"
    assert int(ingest["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"]) == ingest_ports["metrics"]


def test_selectors_select_the_pods_they_mean(manifests: list[tuple[str, dict[str, Any]]]) -> None:
    for name, component in (("forge-realtime", "server"), ("forge-realtime-ingest", "ingest")):
        deployment = one(manifests, "Deployment", name)
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items() and labels["app.kubernetes.io/component"] == component
        pdb = one(manifests, "PodDisruptionBudget", name)
        assert pdb["spec"]["selector"]["matchLabels"] == selector, name
        assert pdb["spec"]["maxUnavailable"] == 1, name
    server = one(manifests, "Deployment", "forge-realtime")
    service = one(manifests, "Service", "forge-realtime")
    assert service["spec"]["selector"] == server["spec"]["selector"]["matchLabels"], "the Service reaches serving pods only"
    hpa = one(manifests, "HorizontalPodAutoscaler", "forge-realtime")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "forge-realtime")
    # a disruption never takes the last serving pod, and a rollout never takes one away first
    assert hpa["spec"]["minReplicas"] > one(manifests, "PodDisruptionBudget", "forge-realtime")["spec"]["maxUnavailable"]
    assert server["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert one(manifests, "Deployment", "forge-realtime-ingest")["spec"]["replicas"] == 2, "one drains, one stands by"


def test_resources_fit_the_benchmarks_memory_per_connection(manifests: list[tuple[str, dict[str, Any]]]) -> None:
    """The request holds the planned connections per pod and the limit holds MAX_CONNECTIONS, at the
    per-connection memory the benchmark measured (bench/results/results.json)."""
    records = json.loads(BENCH_RESULTS.read_text())["records"]
    idle = [r["idle"] for r in records if r["scenario"] == "idle" and r["system"].startswith("ours") and "idle" in r]
    scale = [r["kb_per_conn"] for r in records if r["scenario"] == "scale" and r["system"] == "ours"]
    assert idle and scale, "the benchmark's idle and scale records"
    base = max(r["rss_before_mb"] for r in idle) * MIB
    mixed = max(r["all"] for r in scale) * 1024  # every transport together, under the product's traffic
    worst = max([r["kb_per_connection"] for r in idle] + [max(r["ws"], r["sse"]) for r in scale]) * 1024

    server = one(manifests, "Deployment", "forge-realtime")
    resources = container(server)["resources"]
    planned = int(server["metadata"]["annotations"]["forge-realtime/connections-per-pod"])
    ceiling = setting(manifests, "MAX_CONNECTIONS")
    assert 0 < planned < ceiling
    assert quantity(resources["requests"]["memory"]) >= base + planned * mixed
    assert quantity(resources["limits"]["memory"]) >= base + ceiling * worst
    # one event loop per process: a core is what it can use, and what the HPA's percentage is of
    assert quantity(resources["requests"]["cpu"]) == 1
    assert quantity(resources["limits"]["cpu"]) >= 1
    hpa = one(manifests, "HorizontalPodAutoscaler", "forge-realtime")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and 0 < metric["resource"]["target"]["averageUtilization"] < 100
