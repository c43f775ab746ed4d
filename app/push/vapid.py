"""The service's VAPID identity (RFC 8292): the key browsers bind their push subscriptions to.

Rotating it invalidates every existing subscription, so development keeps one generated key in
DATA_DIR instead of a new one per start.
"""

from __future__ import annotations

import base64
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid

from app.settings import Settings, write_secret_once

KEY_FILE = "vapid-private.pem"


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def load(settings: Settings) -> Vapid:
    """VAPID_PRIVATE_KEY (raw base64url, base64 DER or PEM), else the key kept in DATA_DIR."""
    if settings.vapid_private_key:
        return _parse(settings.vapid_private_key)
    path = settings.data_dir / KEY_FILE
    _create(path)
    return _parse(path.read_text())


def public_key(vapid: Vapid) -> str:
    """The browser's `applicationServerKey`: the uncompressed P-256 point, base64url."""
    raw = vapid.public_key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return b64url(raw)


def generate() -> tuple[str, str]:
    """A new (private, public) pair; the private half in the raw base64url form VAPID_PRIVATE_KEY takes."""
    key = ec.generate_private_key(ec.SECP256R1())
    private = b64url(key.private_numbers().private_value.to_bytes(32, "big"))
    return private, public_key(Vapid(key))


def _parse(text: str) -> Vapid:
    text = text.strip()
    problem = "VAPID_PRIVATE_KEY is not a P-256 private key (raw base64url, DER or PEM)"
    try:
        if text.startswith("-----BEGIN"):
            vapid = Vapid(serialization.load_pem_private_key(text.encode(), password=None))
        else:
            vapid = Vapid.from_string(text)
    except (ValueError, TypeError) as exc:
        raise ValueError(problem) from exc
    key = vapid.private_key
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError(problem)
    return vapid


def _create(path: Path) -> None:
    if path.exists():  # generating a key is not free: skip it when one is kept already
        return
    key = ec.generate_private_key(ec.SECP256R1())
    write_secret_once(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
