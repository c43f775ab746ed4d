"""User JSON the service can store and encode exactly as sent, checked in one place.

JSON allows, and Python's parser accepts, values that our encoder or our databases refuse or
would change on the way (CONTRACT.md section 10, last bullet):

- integers outside -2^63 .. 2^64-1: orjson, which encodes every event, takes int64 and uint64 and
  raises beyond (a Postgres JSONB number would hold more, but no event could announce it); its
  parser even turns them into floats, silently;
- other numbers outside that range, or not finite: Postgres JSONB keeps numbers as decimals and
  gives `1e20` back as the integer 100000000000000000000, which the next event announcing that
  notification could not encode; `1e400` overflows a double and Python's parser also takes `NaN`
  and `Infinity`, which orjson writes as `null` and Postgres and our JSON responses refuse;
- lone surrogates (`"\\ud800"`) in a string or a key: not UTF-8, so neither orjson nor the
  database drivers can encode them;
- NUL characters (`"\\u0000"`) in a string or a key: Postgres text and JSONB refuse them;
- nesting deeper than MAX_DEPTH containers (the document's root is level 1): a bound on what a
  client can make every encoder and every reader of the event walk through.

`check` looks at every value once, with a loop rather than recursion, and names nothing until
it finds something wrong (then a second, slower walk finds the JSON path for the message). Both
walks are wire rules (`app.rules`, from the publisher package), so a worker refuses what the
service would before it sends; this module raises the service's errors and guards its routes.
Callers: every FastAPI route through `guard` (an app-wide dependency: it sees the body FastAPI
has just parsed, before the schema validates it, so a client gets this 422 rather than a 500 or
a validation error that cannot itself be encoded), the WebSocket's client frames (`check_text`)
and the worker ingest (`loads`). Query and path parameters are held to the same rule for text
(a NUL cannot be compared with a Postgres column).
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from starlette.requests import Request

from app.errors import Unrepresentable, UnrepresentableParameter
from app.rules import MAX_DEPTH, is_representable, quoted, representable_problem, text_problem

_ABSENT = object()


def check(value: Any, *, path: str = "$", depth: int = 1) -> None:
    """Raise Unrepresentable when `value` (parsed JSON) holds something the service cannot store
    or encode exactly. `path` and `depth` say where `value` sits in its document (an ingest
    entry's `data` is `$.data` at level 2, as in the HTTP body that would publish it)."""
    if not is_representable(value, depth):
        raise Unrepresentable(representable_problem(value, path, depth) or f"{path} cannot be stored or encoded faithfully")


def loads(raw: str | bytes, *, path: str = "$", depth: int = 1) -> Any:
    """Parse JSON (UTF-8) and check it; the value, exactly as sent. Raises Unrepresentable, and
    ValueError (json.JSONDecodeError, UnicodeDecodeError) for what is not JSON at all.

    orjson parses first (3x faster than Python's parser). What it refuses (a lone surrogate,
    `NaN`, nesting past 1024), or parses into something the check refuses (an integer beyond 64
    bits becomes a float that large), is parsed again by Python's parser, which keeps it as sent
    for the check to name."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    else:
        if is_representable(value, depth):
            return value
    try:
        value = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except RecursionError:
        raise Unrepresentable(f"{path} nests deeper than {MAX_DEPTH} levels") from None
    check(value, path=path, depth=depth)
    return value


def check_text(raw: str | bytes) -> None:
    """Check a JSON text (a WebSocket client frame). Text that is not JSON at all passes: the
    caller's own parser says so in its own words."""
    try:
        loads(raw)
    except ValueError:  # not JSON, or not UTF-8
        return


def check_parameter(name: str, value: str) -> None:
    """A query or path parameter's value: text a database can compare (no NUL, no lone surrogate)."""
    problem = text_problem(value)
    if problem is not None:
        raise UnrepresentableParameter(f"parameter {quoted(name)} holds {problem}")


async def guard(request: Request) -> None:
    """The app-wide dependency (app.main): the route's path and query parameters, then the JSON
    body FastAPI parsed for it, if any (it parses before solving dependencies, and leaves the result
    on the request; a route without a body leaves nothing). A body sent as another type is read but
    not parsed; the schema refuses it, echoing it as text, which bytes that are not UTF-8 cannot be."""
    for name, value in request.path_params.items():
        if type(value) is str:
            check_parameter(name, value)
    if request.scope.get("query_string"):
        for name, value in request.query_params.multi_items():
            check_parameter(name, value)
    cached = request.__dict__
    body = cached.get("_json", _ABSENT)  # Starlette's cache of `await request.json()`
    if body is not _ABSENT:
        check(body)
    elif cached.get("_body"):  # read, not parsed: not sent as JSON; the schema's error would echo it as text
        try:
            cached["_body"].decode("utf-8")
        except UnicodeDecodeError:
            raise Unrepresentable("the body is neither JSON nor UTF-8 text: send JSON, Content-Type: application/json") \
                from None
