"""Sends one push with pywebpush and says what the push service answered.

Per send: fresh VAPID claims (`aud` the endpoint's origin, `exp` 12 h ahead: pywebpush mutates a
claims dict it is given, so a shared one would carry the first service's `aud` everywhere),
aes128gcm, an explicit TTL (pywebpush's default of 0 drops pushes for offline devices) and Urgency.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
from py_vapid import Vapid
from pywebpush import WebPusher, WebPushException

from app.push.payload import MAX_PLAINTEXT
from app.push.queue.base import PushJob

logger = logging.getLogger(__name__)

CLAIMS_LIFETIME = 12 * 3600  # RFC 8292: at most 24 h

Result = Literal["delivered", "gone", "retry", "rejected", "vapid_rejected"]


@dataclass(frozen=True, slots=True)
class Outcome:
    result: Result
    status: int | None = None
    retry_after: float | None = None  # seconds, when the push service said
    detail: str = ""


class _NoRedirects:
    """The `aiohttp_session` handed to pywebpush: posts without following redirects (an allowed
    push service must not be able to bounce us to another host) and with our timeout."""

    def __init__(self, session: aiohttp.ClientSession, timeout: float) -> None:
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    def post(self, url: str, **kwargs: Any) -> Any:
        kwargs["timeout"] = self._timeout
        return self._session.post(url, allow_redirects=False, **kwargs)


class PushSender:
    def __init__(self, vapid: Vapid, *, subject: str, timeout: float) -> None:
        self._vapid = vapid
        self._subject = subject
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(trust_env=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def claims(self, endpoint: str) -> dict[str, str | int]:
        parts = urlsplit(endpoint)
        return {"sub": self._subject, "aud": f"{parts.scheme}://{parts.netloc}", "exp": int(time.time()) + CLAIMS_LIFETIME}

    async def send(self, job: PushJob, ttl: int | None = None) -> Outcome:
        """One attempt. `ttl`: seconds the push service may keep it (what is left of the job's TTL
        on a retry; the job's own by default)."""
        assert self._session is not None, "PushSender.start() first"
        body = job.payload.encode()
        if len(body) > MAX_PLAINTEXT:  # payload.build trims; this is the last line of defence
            return Outcome("rejected", detail=f"payload of {len(body)} bytes exceeds {MAX_PLAINTEXT}")
        headers = {**self._vapid.sign(self.claims(job.endpoint)), "Urgency": job.urgency}
        subscription = {"endpoint": job.endpoint, "keys": {"p256dh": job.p256dh, "auth": job.auth}}
        try:
            pusher = WebPusher(subscription, aiohttp_session=_NoRedirects(self._session, self._timeout))
            response = await pusher.send_async(body, headers, ttl=job.ttl if ttl is None else ttl, content_encoding="aes128gcm")
        except WebPushException as exc:
            return Outcome("rejected", detail=exc.message)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Outcome("retry", detail=f"{type(exc).__name__}: {exc}")
        status: int = response.status
        if status in (200, 201, 202):
            return Outcome("delivered", status)
        if status in (404, 410):
            return Outcome("gone", status)
        if status in (401, 403):
            return Outcome("vapid_rejected", status)
        if status == 429 or status >= 500:
            return Outcome("retry", status, retry_after(response.headers.get("Retry-After")))
        return Outcome("rejected", status, detail="the push service refused the request")


def retry_after(value: str | None) -> float | None:
    """Retry-After in seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)
