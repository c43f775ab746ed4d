"""Push subscriptions are user input: the endpoint decides where this service sends requests, so
only the operator's allowed push services are accepted (PUSH_ALLOWED_ENDPOINTS), and the keys
must be a real P-256 point and a 16-byte secret, or every push to them would fail."""

from __future__ import annotations

import base64
import binascii
import re
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec

from app.errors import EndpointNotAllowed, InvalidSubscription

MAX_ENDPOINT = 2048
_B64URL = re.compile(r"^[A-Za-z0-9_-]+={0,2}$")
_DEFAULT_PORTS = {"https": 443, "http": 80}
_PREFIX = re.compile(r"^(?P<scheme>https?)://(?P<wild>\*\.)?(?P<host>[^/:@*]+)(?::(?P<port>\d*))?(?P<path>/.*)?$")


def check_endpoint(url: str, prefixes: list[str]) -> str:
    """`url` when it starts with an allowed prefix, compared by parts so that neither
    `https://fcm.googleapis.com.evil.example/` nor `https://fcm.googleapis.com@evil.example/` pass.

    A prefix's host may start with `*.` (any subdomain); its port may be given, left empty
    (`http://127.0.0.1:` allows any port) or absent (the scheme's default only).
    """
    if len(url) > MAX_ENDPOINT:
        raise EndpointNotAllowed(f"endpoint is longer than {MAX_ENDPOINT} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise EndpointNotAllowed("endpoint is not a valid URL") from exc
    if parts.username is not None or parts.password is not None or not parts.hostname or not url.isascii():
        raise EndpointNotAllowed("endpoint is not a plain push service URL")
    host, path = parts.hostname, parts.path or "/"
    for prefix in prefixes:
        match = _PREFIX.match(prefix)
        if match is None or match["scheme"] != parts.scheme:
            continue
        wanted = match["host"].lower()
        if not (host == wanted if not match["wild"] else host.endswith("." + wanted)):
            continue
        if match["port"] is None and port not in (None, _DEFAULT_PORTS[parts.scheme]):
            continue
        if match["port"] and port != int(match["port"]):
            continue
        if path.startswith(match["path"] or "/"):
            return url
    raise EndpointNotAllowed("endpoint is not on an allowed push service (PUSH_ALLOWED_ENDPOINTS)")


def check_keys(p256dh: str, auth: str) -> None:
    """The browser's ECDH public key (65-byte uncompressed P-256 point) and 16-byte auth secret."""
    try:
        point, secret = _b64url(p256dh), _b64url(auth)
    except (binascii.Error, ValueError) as exc:
        raise InvalidSubscription("keys must be base64url") from exc
    if len(secret) != 16:
        raise InvalidSubscription("keys.auth must be 16 bytes")
    if len(point) != 65 or point[0] != 4:
        raise InvalidSubscription("keys.p256dh must be an uncompressed P-256 point (65 bytes)")
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except ValueError as exc:
        raise InvalidSubscription("keys.p256dh is not a point on P-256") from exc


def _b64url(value: str) -> bytes:
    if not _B64URL.match(value):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
