"""The wire rules, held once in the publisher package (clients/python, `forge_publisher.rules`) and
read by the service through `app.rules`, which re-exports them and adds the timestamp format: the
contract's names, the typed events' values, a channel's namespace, sizes, a notification's fields;
the service's own models and documents use the same values; and the rules module stays standard
library only. That the publisher refuses exactly what the service refuses is
tests/test_publisher_package.py's."""

from __future__ import annotations

import ast
import re
import sys
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, NotRequired, get_args, get_origin, get_type_hints

import pytest
import yaml
from forge_publisher import events as publisher_events
from forge_publisher import rules as wire

from app import rules
from app.auth import _principal
from app.core import typed
from app.errors import InvalidEvent, Unauthorized
from app.notifications.schemas import Action, NotificationIn, NotificationOut
from app.settings import Settings
from tests.conftest import ROOT

RULES = ROOT / "clients" / "python" / "src" / "forge_publisher" / "rules.py"

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


def test_the_service_reads_the_packages_rules_and_re_exports_every_one() -> None:
    assert rules.CHANNEL_PATTERN is wire.CHANNEL_PATTERN and rules.typed_problem is wire.typed_problem
    tree = ast.parse(RULES.read_text())
    defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    defined |= {node.target.id for node in tree.body if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)}
    defined |= {target.id for node in tree.body if isinstance(node, ast.Assign) for target in node.targets
                if isinstance(target, ast.Name)}
    public = {name for name in defined if not name.startswith("_")}
    assert {"CHANNEL_PATTERN", "JobStatus", "is_representable", "typed_problem"} <= public
    assert sorted(public - set(rules.__all__)) == []
    assert all(getattr(rules, name) is getattr(wire, name) for name in public)
    assert Settings.model_fields["max_event_bytes"].default == wire.DEFAULT_MAX_EVENT_BYTES
    assert Settings.model_fields["redis_prefix"].default == wire.DEFAULT_PREFIX


def test_no_module_of_the_app_writes_a_pattern_again() -> None:
    sources = {path: path.read_text() for path in (ROOT / "app").rglob("*.py")}
    patterns = [value for value in vars(wire).values() if isinstance(value, re.Pattern)]
    assert len(patterns) >= 8
    copies = {str(path.relative_to(ROOT)): sorted({p.pattern for p in patterns if p.pattern in source})
              for path, source in sources.items()}
    copies = {path: found for path, found in copies.items() if found}
    assert copies == {}, f"patterns written again (import them from app.rules): {copies}"


def test_the_notification_models_hold_the_packages_limits() -> None:
    """app.notifications.schemas (its owner's) against forge_publisher.rules, field by field, until
    it imports them: what the publisher refuses locally is what the route refuses."""
    fields = NotificationIn.model_json_schema()["properties"]
    assert fields["category"]["pattern"] == wire.CATEGORY_PATTERN.pattern
    assert fields["category"]["default"] == wire.DEFAULT_CATEGORY
    assert fields["tags"]["items"]["pattern"] == wire.TAG_PATTERN.pattern
    assert fields["tags"]["maxItems"] == wire.TAGS_MAX and fields["actions"]["maxItems"] == wire.ACTIONS_MAX
    assert (fields["title"]["minLength"], fields["title"]["maxLength"]) == (1, wire.TITLE_MAX)
    assert fields["message"]["maxLength"] == wire.MESSAGE_MAX
    assert fields["idempotency_key"]["anyOf"][0]["maxLength"] == wire.IDEMPOTENCY_KEY_MAX
    url = fields["action_url"]["anyOf"][0]
    assert (url["pattern"], url["maxLength"]) == (wire.URL_PATTERN.pattern, wire.URL_MAX)
    action = Action.model_json_schema()["properties"]
    assert action["id"]["pattern"] == wire.ACTION_ID_PATTERN.pattern
    assert (action["label"]["minLength"], action["label"]["maxLength"]) == (1, wire.ACTION_LABEL_MAX)
    assert action["url"]["anyOf"][0] == url


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


# --- the publisher's typed answers: the service's models, field for field -------------------

@pytest.mark.parametrize("typed_dict, model", [
    (publisher_events.Notification, NotificationOut), (publisher_events.Action, Action)], ids=["notification", "action"])
def test_the_publishers_typed_answers_have_the_fields_the_service_sends(typed_dict: Any, model: Any) -> None:
    """A worker reads a `Notification` with the keys NotificationOut serializes, null where it may
    be null, and writes an `Action` leaving out what the service's model lets it leave out."""
    hints = get_type_hints(typed_dict, include_extras=True)
    assert list(hints) == list(model.model_fields)
    may_be_left_out = {name for name, hint in hints.items() if get_origin(hint) is NotRequired}
    unwrapped = {name: get_args(hint)[0] if name in may_be_left_out else hint for name, hint in hints.items()}
    may_be_null = {name for name, hint in unwrapped.items() if type(None) in get_args(hint)}
    assert may_be_null == {name for name, field in model.model_fields.items() if type(None) in get_args(field.annotation)}
    assert may_be_left_out == {name for name, field in model.model_fields.items() if not field.is_required()}


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
    assert sorted(modules - sys.stdlib_module_names) == []  # not even the rest of its package
