"""Property-based fuzzing of the service's own OpenAPI document with schemathesis.

The app runs in-process (schemathesis's ASGI transport runs its lifespan once) on the production
engines: the local Redis (a key prefix of its own) and a Postgres database of its own, migrated.
Every generated request carries a valid token: a service token (scope `publish`) on the routes
that need one, a user token elsewhere, so the fuzzing reaches the handlers instead of stopping at
401. Every check schemathesis has runs on every response (`validate_response` without a list:
no 5xx, status code, content type, headers and body as documented, auth enforced, a resource
gone after its DELETE, ...); the probes some checks send (the same request without the token)
go to the same app.

Generation also reaches what JSON allows but the service cannot store or encode as sent
(CONTRACT.md section 10, last bullet): schemathesis writes bodies with Python's json module and
hypothesis draws text without surrogates, so left alone it never sends a lone surrogate, rarely a
NUL or an integer beyond 64 bits, and never nests deep. `_unrepresentable` (a `flatmap_body`
hook) turns half of the generated bodies into one with one such value mixed in, kind for kind:
an integer pushed beyond 64 bits, a string given a NUL or a lone surrogate, an object (the
free-form `data` of events and notifications first of all) given a member with such a key or
value, or nesting 33 deep. The body is then sent as the JSON text itself (escapes included).

Not fuzzed: `/v1/sse` (a stream that never ends) and `/v1/ws` (an upgrade, covered by the live
transport tests). `/v1/poll` is fuzzed with `timeout=0`, so it answers at once.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.config import SchemathesisConfig
from schemathesis.python import asgi
from sqlalchemy import NullPool, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from app import db
from app.main import create_app
from app.settings import Settings
from tests.conftest import DATABASE_URL, IMPORT_TTL, REDIS_URL, TEST_SECRET, _unavailable, service_token, token

MAX_EXAMPLES = 40
SERVICE_ROUTES = {("POST", "/v1/events"), ("POST", "/v1/notifications")}

# The app the requests go to, built here (building it runs nothing) so that the schema, and every
# probe a check sends, knows it; the fixture makes its database and runs its lifespan.
_PREFIX = f"fuzz{uuid.uuid4().hex[:10]}"
_DATABASE = f"test_fuzz_{uuid.uuid4().hex[:12]}"
_DATA_DIR = tempfile.TemporaryDirectory()
_SETTINGS = Settings(data_dir=Path(_DATA_DIR.name), jwt_secret=TEST_SECRET, redis_url=REDIS_URL, redis_prefix=_PREFIX,
                     database_url=make_url(DATABASE_URL).set(database=_DATABASE).render_as_string(hide_password=False),
                     demo_tokens=False)
app = create_app(_SETTINGS)


_POSITIVE = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]  # schemathesis's own default
_NO_ALLOW = {"allow_header_conformance": {"enabled": False}}


def _accepting(*statuses: str) -> dict[str, Any]:
    return {"positive_data_acceptance": {"expected-statuses": [*_POSITIVE, *statuses]}}


# Every check runs on every operation, but for these (one entry per operation: schemathesis
# merges the entries that match one). Where the contract refuses a schema-valid request for what
# a JSON Schema cannot say, positive data may be refused with that status, there only:
# - POST /v1/events: typed seed events (analysis.progress needs data.progress 0-100, CONTRACT.md
#   section 9): 422; an event over MAX_EVENT_BYTES: 413;
# - cursors (`since`, `cursor`) are opaque, only one the API returned is valid (400 bad_cursor);
#   the long-poll's `channels` is a comma-separated list of channel names (400 bad_channel);
# - a snooze's `until` in the past or more than 90 days ahead: 422 (CONTRACT.md section 10);
# - a push subscription's endpoint must be on an allowed push service (PUSH_ALLOWED_ENDPOINTS) and
#   its keys a point on P-256 and a 16-byte secret: 422 (CONTRACT.md section 7);
# - a critical category cannot be turned off (PUT /v1/notifications/preferences): 422.
# KNOWN (remove once fixed): Starlette answers a 405 with the Allow of one route, where a path has
# one route per method (allow_header_conformance): /v1/notifications, its preferences,
# /v1/push/subscriptions.
_OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/events"): _accepting("413", "422"),
    ("GET", "/v1/poll"): _accepting("400"),
    ("POST", "/v1/notifications/{notification_id}/snooze"): _accepting("422"),
    ("GET", "/v1/notifications"): {**_accepting("400"), **_NO_ALLOW},
    ("POST", "/v1/notifications"): _NO_ALLOW,
    ("GET", "/v1/notifications/preferences"): _NO_ALLOW,
    ("PUT", "/v1/notifications/preferences"): {**_accepting("422"), **_NO_ALLOW},
    ("GET", "/v1/push/subscriptions"): _NO_ALLOW,
    ("POST", "/v1/push/subscriptions"): {**_accepting("422"), **_NO_ALLOW},
    ("DELETE", "/v1/push/subscriptions"): _NO_ALLOW,
}
_CONFIG = SchemathesisConfig.from_dict({"operations": [
    # `include-name` (the operation's label): include-method and include-path would each match alone
    {"include-name": f"{method} {path}", "checks": checks} for (method, path), checks in _OPERATIONS.items()]})

schema = schemathesis.openapi.from_dict(app.openapi(), config=_CONFIG)
schema.app = app
schema = schema.exclude(path_regex=r"^/v1/(sse|ws)$")

_USER = token("u1", "t1", ttl=IMPORT_TTL, channels=["repository:*", "analysis:*", "job:*"])
_SERVICE = service_token("t1", ttl=IMPORT_TTL)


@schema.auth(cache_by_key=lambda case, context: f"{case.method.upper()} {case.path}")
class _Tokens:
    """A valid token on every request: a service token (scope `publish`) where the route needs one,
    a user token elsewhere. As schemathesis's own auth, its checks know it: they send the same
    request without it, or with a broken one, and expect a 401."""

    def get(self, case: schemathesis.Case, context: Any) -> str:
        return _SERVICE if (case.method.upper(), case.path) in SERVICE_ROUTES else _USER

    def set(self, case: schemathesis.Case, data: str, context: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


# --------------------------------------------------------------------------------------------
# unrepresentable values, mixed into generated bodies
# --------------------------------------------------------------------------------------------

_BIG_INTEGERS = st.one_of(st.integers(min_value=2**64, max_value=2**80), st.integers(min_value=-(2**80), max_value=-(2**63) - 1))
_BAD_CHARACTERS = st.sampled_from(["\x00", "\ud800", "\udbff", "\udc00", "\udfff"])
_BAD_FLOATS = st.sampled_from([float("nan"), float("inf"), float("-inf"), 1e20, -1e19, 1.5e308])


def _deep(levels: int) -> Any:
    value: Any = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


_BAD_VALUES = st.one_of(_BIG_INTEGERS, _BAD_FLOATS, st.builds(lambda c, s: s + c, _BAD_CHARACTERS, st.text(max_size=5)),
                        st.just(_deep(33)))


def _places(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Every JSON value in a body, with its path (the free-form `data` objects first)."""
    yield path, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _places(item, (*path, key))
    elif isinstance(value, list):
        for n, item in enumerate(value):
            yield from _places(item, (*path, n))


def _spoil(body: Any, path: tuple[Any, ...], bad: Any, character: str, as_key: bool) -> Any:
    """`body` with the value at `path` made unrepresentable, of its own kind where it has one."""

    def spoiled(value: Any) -> Any:
        if isinstance(value, bool) or value is None:
            return bad
        if isinstance(value, int):
            return (value + 2**64) if value >= 0 else (value - 2**63 - 1)
        if isinstance(value, float):
            return float("nan")
        if isinstance(value, str):
            middle = len(value) // 2
            return value[:middle] + character + value[middle:]
        if isinstance(value, dict):
            return {**value, ("k" + character if as_key else "x"): bad}
        if isinstance(value, list):
            return [*value, bad]
        return bad

    if not path:
        return spoiled(body)
    copy = json.loads(json.dumps(body))
    parent = copy
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = spoiled(parent[path[-1]])
    return copy


@st.composite
def _spoiled_body(draw: st.DrawFn, body: Any) -> bytes:
    places = list(_places(body))
    free_form = [path for path, value in places if path and path[-1] == "data" and isinstance(value, dict)]
    path = draw(st.sampled_from(free_form) if free_form and draw(st.booleans()) else st.sampled_from([p for p, _ in places]))
    spoiled = _spoil(body, path, draw(_BAD_VALUES), draw(_BAD_CHARACTERS), draw(st.booleans()))
    # the JSON text itself: escapes for surrogates (ensure_ascii), NaN and Infinity as Python writes them
    return json.dumps(spoiled, allow_nan=True).encode()


@schema.hook("filter_failure")
def _refused_as_the_contract_says(context: Any, failure: Any, case: Any, response: Any) -> bool:
    """A schema-valid body (JSON Schema's `string` admits a NUL, its `integer` 10^20) that holds
    what the service cannot store or encode is refused with the contract's 422: not a failure."""
    if type(failure).__name__ != "RejectedPositiveData" or response.status_code != 422:
        return True
    try:
        code = json.loads(response.content).get("code")
    except ValueError:
        return True
    return code not in ("unrepresentable_json", "unrepresentable_parameter")


@schema.hook("flatmap_body")
def _unrepresentable(context: Any, body: Any) -> st.SearchStrategy[Any]:
    if isinstance(body, (bytes, str)) or body is None:
        return st.just(body)
    return st.one_of(st.just(body), _spoiled_body(body))


# --------------------------------------------------------------------------------------------


async def _create_database() -> None:
    admin = create_async_engine(make_url(DATABASE_URL), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'CREATE DATABASE "{_DATABASE}"'))
    finally:
        await admin.dispose()


async def _drop_database() -> None:
    admin = create_async_engine(make_url(DATABASE_URL), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{_DATABASE}" WITH (FORCE)'))
    finally:
        await admin.dispose()


@pytest.fixture(scope="module")
def client() -> Iterator[asgi.ASGIClient]:
    """An in-process client of the app on the local Redis (a prefix of its own) and a Postgres
    database of its own (migrated); all three are gone afterwards."""
    import asyncio

    try:
        sync_redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except Exception:
        _unavailable(f"Redis at {REDIS_URL}", "start redis-server or set TEST_REDIS_URL")
    try:
        asyncio.run(_create_database())
    except Exception as exc:  # unreachable, or no CREATEDB right: skipped (a failure under CI=true)
        _unavailable(f"Postgres at {DATABASE_URL} ({type(exc).__name__}: {exc})",
                     "start PostgreSQL or set TEST_DATABASE_URL to a role that may CREATE DATABASE")
    try:
        db.run_migrations(_SETTINGS)
        with asgi.get_client(app) as session:  # runs the app's lifespan startup
            session.base_url = "http://localhost"
            yield session
            lifespan = asgi._LIFESPANS.pop(id(app), None)  # schemathesis keeps it until exit otherwise
            if lifespan is not None:
                lifespan.stop()
    finally:
        asyncio.run(_drop_database())
        _DATA_DIR.cleanup()
        keys = sync_redis.Redis.from_url(REDIS_URL)
        found = list(keys.scan_iter(f"{_PREFIX}:*", count=1000))
        if found:
            keys.delete(*found)
        keys.close()


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])
def test_api_conforms_to_its_openapi_and_never_answers_5xx(case: schemathesis.Case, client: asgi.ASGIClient) -> None:
    if case.path == "/v1/poll":
        case.query = {**(case.query or {}), "timeout": 0}
    response = case.call(session=client)
    if response.status_code == 422:
        _REFUSED.setdefault(case.operation.label, set()).add(str(json.loads(response.content).get("code")))
    _RAN.add(case.operation.label)
    case.validate_response(response)  # every check


_RAN: set[str] = set()
_REFUSED: dict[str, set[str]] = {}  # operation -> the codes of its 422s


def test_the_fuzzing_reached_unrepresentable_json_on_every_route_with_a_body() -> None:
    """Runs after the fuzzing (the order of this file): each route with a JSON body that was fuzzed
    was sent something it cannot store, and refused it as the contract says."""
    with_body = {f"{m.upper()} {path}" for path, ops in app.openapi()["paths"].items() for m, op in ops.items()
                 if "application/json" in op.get("requestBody", {}).get("content", {})}
    fuzzed = with_body & _RAN
    if not fuzzed:
        pytest.skip("no route with a body was fuzzed in this run (-k?)")
    missed = sorted(label for label in fuzzed if "unrepresentable_json" not in _REFUSED.get(label, set()))
    assert missed == [], f"never answered unrepresentable_json: {missed}"
