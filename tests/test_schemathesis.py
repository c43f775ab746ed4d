"""Property-based fuzzing of the service's own OpenAPI document with schemathesis.

The app runs in-process (schemathesis's ASGI transport runs its lifespan once) on the production
engines: the local Redis (a key prefix of its own) and a Postgres database of its own, migrated.
Every generated request carries a valid token: a service token (scope `publish`) on the routes
that need one, a user token elsewhere, so the fuzzing reaches the handlers instead of stopping at
401. Checked on every response: no 5xx (`not_a_server_error`), and status code, content type,
headers and body conform to the schema wherever the schema declares them, and every status code
answered is one the route documents.

Not fuzzed: `/v1/sse` (a stream that never ends) and `/v1/ws` (an upgrade, covered by the live
transport tests). `/v1/poll` is fuzzed with `timeout=0`, so it answers at once.
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as sync_redis
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.python import asgi

from app import db
from app.main import create_app
from app.settings import Settings
from tests.conftest import REDIS_URL, TEST_SECRET, _unavailable, auth, service_token, token
from tests.notify_support import postgres_database

MAX_EXAMPLES = 25
SERVICE_ROUTES = {("POST", "/v1/events"), ("POST", "/v1/notifications")}
# Every status a route answers is in its document, FastAPI's own 400 for an undecodable body and
# the notifications' `bad_cursor` included, so `status_code_conformance` holds too.
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]


# The operations come from the app's own document (building the app runs nothing); the requests go
# to a second instance of the same app, on Redis and Postgres, whose lifespan the fixture runs.
schema = schemathesis.openapi.from_dict(
    create_app(Settings(jwt_secret=TEST_SECRET, demo_tokens=False)).openapi()
).exclude(path_regex=r"^/v1/(sse|ws)$")

_USER = token("u1", "t1", ttl=3600, channels=["repository:*", "analysis:*", "job:*"])
_SERVICE = service_token("t1")


@pytest.fixture(scope="module")
def client() -> Iterator[asgi.ASGIClient]:
    """An in-process client of the app on the local Redis (a prefix of its own) and a Postgres
    database of its own (migrated); all three are gone afterwards."""
    try:
        sync_redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except Exception:
        _unavailable(f"Redis at {REDIS_URL}", "start redis-server or set TEST_REDIS_URL")
    prefix = f"fuzz{uuid.uuid4().hex[:10]}"
    loop = asyncio.new_event_loop()
    database = postgres_database()
    url = loop.run_until_complete(database.__aenter__())
    try:
        with tempfile.TemporaryDirectory() as data_dir:
            app_settings = Settings(data_dir=Path(data_dir), jwt_secret=TEST_SECRET, redis_url=REDIS_URL,
                                    redis_prefix=prefix, database_url=url, demo_tokens=False)
            db.run_migrations(app_settings)
            app = create_app(app_settings)
            with asgi.get_client(app) as session:  # runs the app's lifespan startup
                session.base_url = "http://localhost"
                yield session
                lifespan = asgi._LIFESPANS.pop(id(app), None)  # schemathesis keeps it until exit otherwise
                if lifespan is not None:
                    lifespan.stop()
    finally:
        loop.run_until_complete(database.__aexit__(None, None, None))
        loop.close()
        keys = sync_redis.Redis.from_url(REDIS_URL)
        found = list(keys.scan_iter(f"{prefix}:*", count=1000))
        if found:
            keys.delete(*found)
        keys.close()


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])
def test_api_conforms_to_its_openapi_and_never_answers_5xx(case: schemathesis.Case, client: asgi.ASGIClient) -> None:
    operation = (case.method.upper(), case.path)
    case.headers = {**(case.headers or {}), **auth(_SERVICE if operation in SERVICE_ROUTES else _USER)}
    if case.path == "/v1/poll":
        case.query = {**(case.query or {}), "timeout": 0}
    response = case.call(session=client)
    case.validate_response(response, checks=CHECKS)
