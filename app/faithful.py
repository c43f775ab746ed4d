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
it finds something wrong (then a second, slower walk finds the JSON path for the message).
Callers: every FastAPI route through `guard` (an app-wide dependency: it sees the body FastAPI
has just parsed, before the schema validates it, so a client gets this 422 rather than a 500 or
a validation error that cannot itself be encoded), the WebSocket's client frames (`check_text`)
and the worker ingest (`loads`). Query and path parameters are held to the same rule for text
(a NUL cannot be compared with a Postgres column).
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
from starlette.requests import Request

from app.errors import Unrepresentable, UnrepresentableParameter

INT_MIN = -(1 << 63)  # int64's least: the most negative integer orjson encodes
INT_MAX = (1 << 64) - 1  # uint64's greatest: the largest integer orjson encodes
MAX_DEPTH = 32  # containers nested in one document, its root included

# A float must lie strictly between these: finite, and within the integers above (a float as
# large as 2^64 is an integer, and JSONB would give it back as one). orjson's parser makes an
# integer beyond 64 bits a float outside them too, so what passes this holds every number as sent.
_FLOAT_LOW, _FLOAT_HIGH = float(INT_MIN), float(INT_MAX + 1)

_SURROGATE = re.compile("[\ud800-\udfff]")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PATH_LIMIT = 200  # characters of a JSON path quoted in a message
_KEY_LIMIT = 40  # characters of one key quoted in a path
_ABSENT = object()


def check(value: Any, *, path: str = "$", depth: int = 1) -> None:
    """Raise Unrepresentable when `value` (parsed JSON) holds something the service cannot store
    or encode exactly. `path` and `depth` say where `value` sits in its document (an ingest
    entry's `data` is `$.data` at level 2, as in the HTTP body that would publish it)."""
    if not _faithful(value, depth):
        raise _explain(value, path, depth)


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
        if _faithful(value, depth):
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
    if _bad_text(value):
        raise UnrepresentableParameter(f"parameter {_quoted(name)} holds {_text_problem(value)}")


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


def _bad_text(text: str) -> bool:
    return "\x00" in text or (not text.isascii() and _SURROGATE.search(text) is not None)


def _faithful(root: Any, depth: int) -> bool:
    """True when nothing in `root` is unrepresentable: the fast walk, on every publish."""
    kind = type(root)
    if kind is not dict and kind is not list:
        return _scalar_ok(root)
    surrogate = _SURROGATE.search
    low, high = _FLOAT_LOW, _FLOAT_HIGH
    stack: list[tuple[Any, int]] = [(root, depth)]
    pop, push = stack.pop, stack.append
    while stack:
        node, level = pop()
        if level > MAX_DEPTH:
            return False
        if type(node) is dict:
            for key in node:
                if "\x00" in key or (not key.isascii() and surrogate(key)):
                    return False
            values = node.values()
        else:
            values = node
        for item in values:
            kind = type(item)
            if kind is str:
                if "\x00" in item or (not item.isascii() and surrogate(item)):
                    return False
            elif kind is int:
                if not INT_MIN <= item <= INT_MAX:
                    return False
            elif kind is dict or kind is list:
                push((item, level + 1))
            elif kind is float and not low < item < high:  # NaN compares false: refused too
                return False
    return True


def _scalar_ok(value: Any) -> bool:
    kind = type(value)
    if kind is str:
        return not _bad_text(value)
    if kind is int:
        return INT_MIN <= value <= INT_MAX
    if kind is float:
        return _FLOAT_LOW < value < _FLOAT_HIGH
    return True


def _text_problem(text: str) -> str:
    return "a NUL character (\\u0000)" if "\x00" in text else "a lone surrogate (an unpaired \\ud800-\\udfff)"


def _scalar_problem(value: Any) -> str | None:
    if _scalar_ok(value):
        return None
    if type(value) is str:
        return f"a string with {_text_problem(value)}"
    if type(value) is int:
        return "an integer beyond 64 bits (integers must be within -2^63 .. 2^64-1)"
    if value - value == 0:  # finite
        return "a number beyond 64 bits (numbers must be within -2^63 .. 2^64-1)"
    return "a number that is not finite (NaN, Infinity, or beyond a double's range)"


def _explain(root: Any, path: str, depth: int) -> Unrepresentable:
    """The first unrepresentable thing in `root`, with its JSON path (only after _faithful said no)."""
    stack: list[tuple[Any, str, int]] = [(root, path, depth)]
    while stack:
        node, where, level = stack.pop()
        kind = type(node)
        if kind is not dict and kind is not list:
            problem = _scalar_problem(node)
            if problem is not None:
                return Unrepresentable(f"{_short(where)} is {problem}")
            continue
        if level > MAX_DEPTH:
            return Unrepresentable(f"{_short(where)} nests deeper than {MAX_DEPTH} levels")
        if kind is dict:
            members = list(node.items())
            for key, _ in members:
                if type(key) is str and _bad_text(key):
                    return Unrepresentable(f"the key of {_short(_member(where, key))} has {_text_problem(key)}")
            children = [(value, _member(where, key), level + 1) for key, value in members]
        else:
            children = [(value, f"{where}[{n}]", level + 1) for n, value in enumerate(node)]
        stack.extend(reversed(children))  # document order: the first problem a reader meets
    return Unrepresentable(f"{_short(path)} cannot be stored or encoded faithfully")  # not reached: _faithful agrees


def _member(path: str, key: Any) -> str:
    key = str(key)
    if _IDENTIFIER.fullmatch(key):
        return f"{path}.{key}"
    return f"{path}[{_quoted(key)}]"


def _quoted(text: str) -> str:
    """A JSON string literal in ASCII: it quotes a NUL or a lone surrogate without carrying one."""
    return json.dumps(text[:_KEY_LIMIT] + ("..." if len(text) > _KEY_LIMIT else ""))


def _short(path: str) -> str:
    return path if len(path) <= _PATH_LIMIT else path[: _PATH_LIMIT // 2] + "..." + path[-_PATH_LIMIT // 2:]
