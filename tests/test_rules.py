"""app/rules.py, the one copy of the wire rules: the contract's names, the typed events' values, a
channel's namespace and the timestamp format; the publisher helper and the service agree on them
because both read them from there; and rules.py stays shippable (standard library only)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
import yaml

from app import publisher, rules
from app.auth import _principal
from app.core import typed
from app.core.publish import prepare
from app.errors import InvalidEvent, ServiceError, Unauthorized
from app.notifications.schemas import NotificationIn
from app.settings import Settings
from tests.conftest import ROOT

RULES = ROOT / "app" / "rules.py"
MAX_EVENT_BYTES = 65536

# --- names: the contract's section 2 (channels) and the JWT claims of section 1 -----------------

GOOD_CHANNELS = ["tenant:org_123", "user:user_789", "repository:repo_456", "analysis:a1", "job:j1",
                 "user:ada@forge.example", "repository:a:b", "x_y-z:A.b_c-d@e:f", "a:" + "x" * 128]
BAD_CHANNELS = ["Not A Channel", "repository", "repository:", ":r1", "Repository:r1", "repo.sitory:r1",
                "repository:r 1", "repository:r/1", "repository:r1\n", "repository:r1 ", " repository:r1",
                "repository:r\u00e91", "a:" + "x" * 129, ""]
GOOD_TYPES = ["analysis.progress", "refactoring.status", "system.alert", "presence.join", "a:b", "A_b-c.d", "x" * 64]
BAD_TYPES = ["", "bad type!", "x" * 65, "x\n", "a/b", "a@b", "\u00e9"]
GOOD_TENANTS = ["org_123", "demo", "a.b@c-d", "T" * 128]
BAD_TENANTS = ["", "t 1", "t:1", "org_123\n", "T" * 129, "t/1", "\u00e9"]
GOOD_USERS = ["u1", "user_789", "ada@forge.example", "svc:worker", "U" * 128]
BAD_USERS = ["", "u 1", "u1\n", "U" * 129, "u/1"]


@pytest.mark.parametrize("check, good, bad", [
    (rules.is_channel, GOOD_CHANNELS, BAD_CHANNELS),
    (rules.is_type, GOOD_TYPES, BAD_TYPES),
    (rules.is_tenant, GOOD_TENANTS, BAD_TENANTS),
    (rules.is_user, GOOD_USERS, BAD_USERS),
], ids=["channel", "type", "tenant", "user"])
def test_the_name_rules_accept_and_refuse_as_the_contract_says(check: Any, good: list[str], bad: list[str]) -> None:
    assert [name for name in good if not check(name)] == []
    assert [name for name in bad if check(name)] == []
    assert not any(check(value) for value in (None, 42, b"analysis:a1", ["analysis:a1"]))


def test_the_patterns_are_the_contracts_and_a_trailing_newline_is_refused() -> None:
    # the contract's own spelling (section 2), anchored
    assert rules.CHANNEL_PATTERN.pattern == "^[a-z0-9_-]+:[A-Za-z0-9_.:@-]{1,128}$"
    assert rules.TYPE_PATTERN.pattern == "^[A-Za-z0-9_.:-]{1,64}$"
    assert rules.TENANT_PATTERN.pattern == "^[A-Za-z0-9_.@-]{1,128}$"
    assert rules.USER_PATTERN.pattern == "^[A-Za-z0-9_.:@-]{1,128}$"
    # re.match with `$` would take "analysis:a1\n"; the rules match the whole string, as pydantic does
    assert rules.CHANNEL_PATTERN.match("analysis:a1\n") and not rules.is_channel("analysis:a1\n")


def test_the_documents_and_the_pydantic_models_use_the_same_patterns() -> None:
    asyncapi = yaml.safe_load((ROOT / "app" / "static" / "asyncapi.yaml").read_text())
    assert asyncapi["components"]["schemas"]["Channel"]["pattern"] == rules.CHANNEL_PATTERN.pattern
    fields = NotificationIn.model_json_schema()["properties"]
    assert fields["tenant"]["pattern"] == rules.TENANT_PATTERN.pattern
    assert fields["user_id"]["pattern"] == rules.USER_PATTERN.pattern
    assert fields["type"]["pattern"] == rules.TYPE_PATTERN.pattern
    assert Settings.model_json_schema()["properties"]["demo_tenant"]["pattern"] == rules.TENANT_PATTERN.pattern


def test_no_module_of_the_app_writes_a_pattern_again() -> None:
    sources = {path: path.read_text() for path in (ROOT / "app").rglob("*.py") if path != RULES}
    for pattern in (rules.CHANNEL_PATTERN, rules.TYPE_PATTERN, rules.TENANT_PATTERN, rules.USER_PATTERN):
        copies = [str(path.relative_to(ROOT)) for path, source in sources.items() if pattern.pattern in source]
        assert copies == [], f"{pattern.pattern} is written again in {copies}: import it from app.rules"


@pytest.mark.parametrize("claims, error", [
    ({"sub": "u1\n", "tid": "t1"}, "sub"),
    ({"sub": "u1", "tid": "t1\n"}, "tid"),
    ({"sub": "u1", "tid": "t:1"}, "tid"),
    ({"sub": 42, "tid": "t1"}, "sub"),
])
def test_token_claims_follow_the_same_rules(claims: dict[str, Any], error: str) -> None:
    with pytest.raises(Unauthorized, match=error):
        _principal({"exp": 2_000_000_000, **claims})


# --- namespaces --------------------------------------------------------------------------------

def test_namespace_and_split_channel() -> None:
    assert rules.namespace("repository:r1") == "repository"
    assert rules.namespace("repository:a:b") == "repository"
    assert rules.split_channel("repository:a:b") == ("repository", "a:b")
    assert rules.split_channel("user:ada@forge.example") == ("user", "ada@forge.example")
    assert rules.user_channel("u1") == "user:u1" and rules.tenant_channel("org_123") == "tenant:org_123"
    assert all(rules.is_channel(f"{space}:x") for space in
               (rules.USER_NAMESPACE, rules.TENANT_NAMESPACE, rules.ANALYSIS_NAMESPACE, rules.JOB_NAMESPACE))


# --- the typed seed events: contract section 9 -------------------------------------------------

def test_statuses_and_severities() -> None:
    assert rules.JOB_STATUSES == ("queued", "running", "completed", "failed", "cancelled")
    assert rules.TERMINAL_STATUSES == {"completed", "failed", "cancelled"}  # noqa: SIM300 - the value under test on the left
    assert [rules.JOB_STATUS_RANK[s] for s in rules.JOB_STATUSES] == [0, 1, 2, 2, 2]
    assert rules.SEVERITIES == ("info", "warning", "critical")
    with pytest.raises(TypeError):
        rules.JOB_STATUS_RANK["paused"] = 3  # type: ignore[index]


@pytest.mark.parametrize("type_, data, problem", [
    ("analysis.progress", {"progress": 0}, None),
    ("analysis.progress", {"progress": 100}, None),
    ("analysis.progress", {"progress": 42.5}, None),
    ("analysis.progress", {"progress": 101}, "data.progress"),
    ("analysis.progress", {"progress": -1}, "data.progress"),
    ("analysis.progress", {"progress": True}, "data.progress"),
    ("analysis.progress", {"progress": "42"}, "data.progress"),
    ("analysis.progress", {"progress": float("nan")}, "data.progress"),
    ("analysis.progress", {}, "data.progress"),
    ("refactoring.status", {"status": "running"}, None),
    ("refactoring.status", {"status": "paused"}, "queued, running, completed, failed, cancelled"),
    ("refactoring.status", {"status": ["running"]}, "data.status"),  # unhashable: once a TypeError (a 500)
    ("refactoring.status", {"status": {"a": 1}}, "data.status"),
    ("refactoring.status", {}, "data.status"),
    ("system.alert", {"severity": "critical"}, None),
    ("system.alert", {"severity": "fatal"}, "info, warning, critical"),
    ("system.alert", {"severity": ["info"]}, "data.severity"),
    ("repository.updated", {"status": [], "progress": 500, "severity": None}, None),  # free-form
])
def test_typed_problems_and_the_service_refusing_them(type_: str, data: dict[str, Any], problem: str | None) -> None:
    found = rules.typed_problem(type_, data)
    if problem is None:
        assert found is None
        typed.validate(type_, data)
    else:
        assert found is not None and problem in found
        with pytest.raises(InvalidEvent) as refused:
            typed.validate(type_, data)
        assert refused.value.message == found


def test_typed_orders_are_unchanged() -> None:
    assert typed.validate("analysis.progress", {"progress": 42}) == typed.Order(42.0, "42")
    assert typed.validate("refactoring.status", {"status": "queued"}) == typed.Order(0, "queued")
    assert typed.validate("refactoring.status", {"status": "failed"}) == typed.Order(2, "failed", terminal=True)
    assert typed.validate("system.alert", {"severity": "info"}) is None


# --- timestamps: contract section 3 ------------------------------------------------------------

def test_iso_ms_is_the_envelopes_ts() -> None:
    assert rules.iso_ms(1795845600000) == "2026-11-28T06:00:00.000Z"  # the contract's example
    assert rules.iso_ms(0) == "1970-01-01T00:00:00.000Z"
    assert rules.iso_ms(1795845600007) == "2026-11-28T06:00:00.007Z"
    assert rules.iso_ms(1795845600999) == "2026-11-28T06:00:00.999Z"
    assert rules.iso_ms(-1) == "1969-12-31T23:59:59.999Z"


def test_iso_ms_of_milliseconds_is_the_datetime_form_across_seconds() -> None:
    # the per-second cache (64 entries) is passed through many times: six seconds around the
    # epoch every 7 ms, both sides of a leap day's midnight, the first ms of year 1 and the last
    # of 9999, and a thousand seconds ~1,000 s apart (each a different millisecond)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    moments = [*range(-3_000, 3_000, 7), 951_782_399_999, 951_782_400_000, 253_402_300_799_999,
               *(1_795_845_600_000 + k * 999_983 for k in range(-500, 500)), -62_135_596_800_000]
    for ms in moments:
        expected = (epoch + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        assert rules.iso_ms(ms) == expected, ms


def test_iso_ms_of_a_datetime_truncates_to_milliseconds_in_utc() -> None:
    assert rules.iso_ms(datetime(2026, 11, 28, 6, 0, 0, 999_999, tzinfo=UTC)) == "2026-11-28T06:00:00.999Z"
    assert rules.iso_ms(datetime(2026, 11, 28, 7, 30, tzinfo=timezone(timedelta(hours=1, minutes=30)))) \
        == "2026-11-28T06:00:00.000Z"
    with pytest.raises(ValueError):
        rules.iso_ms(datetime(2026, 11, 28, 6))  # naive: which zone is unknown


def test_iso_ms_is_byte_identical_to_the_formulas_it_replaced() -> None:
    """Event.json and the presence `since` formatted `datetime.fromtimestamp(ms / 1000, UTC)`;
    app.sql and app.logs an aware datetime. Identical wherever float seconds are exact to the
    microsecond (until 2242); past that the old float formula is off by one ms and iso_ms is not."""
    def old_ms(ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def old_datetime(value: datetime) -> str:
        return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    step = 7_919_993  # a prime number of ms, so every millisecond digit comes up
    moments = [*range(0, 10**6, 37), *range(1_700_000_000_000, 1_700_000_000_000 + 10**6, 41),
               *range(0, 8_000_000_000_000, step * 1000 + 1)]
    assert [m for m in moments if rules.iso_ms(m) != old_ms(m)] == []
    for m in moments[::50]:
        moment = datetime.fromtimestamp(m / 1000, UTC) + timedelta(microseconds=m % 997)
        assert rules.iso_ms(moment) == old_datetime(moment)
    assert rules.iso_ms(9_725_935_455_508) == "2278-03-15T16:44:15.508Z"  # old_ms said .507


# --- the publisher helper and the service agree ------------------------------------------------

def _service_refuses(tenant: str, channel: str, type_: str, data: Any) -> bool:
    """What the server does with an entry a worker XADDs without the helper (app.ingest)."""
    raw = json.dumps(data, separators=(",", ":")).encode()
    try:
        prepare(tenant, channel, type_, orjson.loads(raw), max_event_bytes=MAX_EVENT_BYTES)
    except (ServiceError, orjson.JSONDecodeError):
        return True
    return False


def _publisher_refuses(tenant: str, channel: str, type_: str, data: Any) -> bool:
    try:
        publisher.ingest_fields(tenant, channel, type_, data)
    except ValueError:
        return True
    return False


TRICKY: list[tuple[str, str, str, Any, bool]] = [  # tenant, channel, type, data, refused
    ("org_123", "analysis:a1", "analysis.progress", {"progress": 42}, False),
    ("org_123", "repository:a:b", "repository.updated", {"sha": "abc"}, False),
    ("T" * 128, "a:" + "x" * 128, "x" * 64, {}, False),
    ("org_123\n", "analysis:a1", "x", {}, True),
    ("t 1", "analysis:a1", "x", {}, True),
    ("t:1", "analysis:a1", "x", {}, True),
    ("", "analysis:a1", "x", {}, True),
    ("org_123", "analysis:a1\n", "x", {}, True),
    ("org_123", "Analysis:a1", "x", {}, True),
    ("org_123", "analysis:", "x", {}, True),
    ("org_123", "analysis", "x", {}, True),
    ("org_123", "a:" + "x" * 129, "x", {}, True),
    ("org_123", "analysis:a\u00e91", "x", {}, True),
    ("org_123", "analysis:a1", "x\n", {}, True),
    ("org_123", "analysis:a1", "x" * 65, {}, True),
    ("org_123", "analysis:a1", "bad type!", {}, True),
    ("org_123", "analysis:a1", "x", [1, 2], True),
    ("org_123", "analysis:a1", "x", {"v": float("nan")}, True),
    ("org_123", "analysis:a1", "x", {"v": float("inf")}, True),
    ("org_123", "analysis:a1", "analysis.progress", {"progress": 101}, True),
    ("org_123", "analysis:a1", "analysis.progress", {"progress": True}, True),
    ("org_123", "analysis:a1", "analysis.progress", {}, True),
    ("org_123", "job:j1", "refactoring.status", {"status": "running"}, False),
    ("org_123", "job:j1", "refactoring.status", {"status": "paused"}, True),
    ("org_123", "job:j1", "refactoring.status", {"status": ["running"]}, True),
    ("org_123", "tenant:org_123", "system.alert", {"severity": "warning"}, False),
    ("org_123", "tenant:org_123", "system.alert", {"severity": "fatal"}, True),
]


@pytest.mark.parametrize("tenant, channel, type_, data, refused", TRICKY)
def test_the_publisher_helper_refuses_exactly_what_the_service_refuses(
        tenant: str, channel: str, type_: str, data: Any, refused: bool) -> None:
    assert _service_refuses(tenant, channel, type_, data) is refused
    assert _publisher_refuses(tenant, channel, type_, data) is refused


def test_the_publisher_helpers_shortcuts_use_the_same_values() -> None:
    assert publisher.JOB_STATUSES == rules.JOB_STATUSES and publisher.SEVERITIES == rules.SEVERITIES
    assert publisher._progress("a1", 42, {}) == ("analysis:a1", "analysis.progress", {"analysisId": "a1", "progress": 42})
    assert publisher._job_status("j1", "completed", {})[:2] == ("job:j1", "refactoring.status")
    assert publisher._alert("org_123", "info", "hi", {})[:2] == ("tenant:org_123", "system.alert")
    for status in rules.JOB_STATUSES:
        assert not _service_refuses("t1", *publisher._job_status("j1", status, {}))
    for severity in rules.SEVERITIES:
        assert not _service_refuses("t1", *publisher._alert("t1", severity, "hi", {}))
    for bad in (lambda: publisher._progress("a1", 101, {}), lambda: publisher._job_status("j1", ["queued"], {}),
                lambda: publisher._alert("t1", "fatal", "hi", {})):
        with pytest.raises(ValueError):
            bad()


# --- shippable: the standard library only ------------------------------------------------------

def test_rules_imports_nothing_outside_the_standard_library() -> None:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(RULES.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module, "no relative imports: rules.py must stand alone"
            modules.add(node.module.partition(".")[0])
    assert modules, "the walk found no imports at all"
    assert sorted(modules - sys.stdlib_module_names) == []


def test_the_publisher_helper_runs_without_any_third_party_package() -> None:
    """-S -I: no site-packages on the path, so any import of fastapi, pydantic, redis... fails."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import app.publisher; "
            "print(sorted(m for m in sys.modules if m == 'app' or m.startswith('app.')))")
    result = subprocess.run([sys.executable, "-S", "-I", "-c", code, str(ROOT)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['app', 'app.publisher', 'app.rules']"
