"""Operator-set limits: open connections per process, and token-bucket rates.

Every refusal is counted in `realtime_limit_hits_total{limit=...}` (app.metrics) by the code
that refuses, and the client gets a named error (app.errors) with, where waiting helps, the
seconds to wait. Everything here is per process and in memory: a limit bounds what one process
accepts, so N processes behind a load balancer accept N times as much (size limits per process).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

from app import metrics
from app.errors import RateLimited, TooManyConnections
from app.settings import Settings

Clock = Callable[[], float]

# Seconds a client refused for the connection cap is told to wait: connections free up at no
# predictable moment, and a whole refused crowd retrying every second would only add load.
CONNECTIONS_RETRY_AFTER = 5


class TokenBucket:
    """`rate` tokens per second, holding at most `burst`; each admitted message takes one.

    Time comes from `clock` (monotonic seconds), injectable so tests need no sleeping.
    """

    __slots__ = ("_clock", "burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: float, *, clock: Clock = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a bucket needs rate > 0 and burst >= 1")
        self.rate, self.burst, self._clock = rate, float(burst), clock
        self.tokens = float(burst)
        self.updated = clock()

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def take(self, cost: float = 1.0) -> float:
        """Admit one message: 0.0, or (refused, nothing taken) the seconds until it would fit."""
        self._refill(self._clock())
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        return (cost - self.tokens) / self.rate

    def full_at(self) -> float:
        """The clock time at which this bucket is full again (and so as good as forgotten)."""
        return self.updated + (self.burst - self.tokens) / self.rate


class RateLimiter:
    """Token buckets keyed by a string (e.g. a publisher's tenant and subject), bounded in memory.

    A bucket left alone until it is full again is identical to a new one, so it is dropped: each
    call looks at the least recently used bucket and forgets it once it is full. The map still
    never holds more than `max_keys` buckets: past that the least recently used one is dropped
    even if not full, which at worst hands that key a fresh burst early.
    """

    def __init__(self, rate: float, burst: float, *, max_keys: int = 100_000, clock: Clock = time.monotonic) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        TokenBucket(rate, burst, clock=clock)  # validates rate and burst once, here
        self.rate, self.burst, self.max_keys, self._clock = rate, burst, max_keys, clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> float:
        """0.0 when `key` may go ahead, else the seconds it should wait (nothing was taken)."""
        now = self._clock()
        self._evict_idle(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, clock=self._clock)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.take()

    def _evict_idle(self, now: float) -> None:
        # least recently used first: once the oldest is still filling up, so may the rest be
        while self._buckets:
            oldest = next(iter(self._buckets.values()))
            if oldest.full_at() > now:
                return
            self._buckets.popitem(last=False)


class ConnectionSlots:
    """The number of client connections this process holds, across WebSocket, SSE and polling
    (a long-poll request counts while it waits). `maximum` 0 means unlimited."""

    def __init__(self, maximum: int) -> None:
        if maximum < 0:
            raise ValueError("maximum must be 0 (unlimited) or more")
        self.maximum = maximum
        self.open = 0

    def acquire(self) -> None:
        """Take a slot, or raise TooManyConnections (counted) when the process is full."""
        if self.maximum and self.open >= self.maximum:
            metrics.LIMIT_HITS.labels(limit="connections").inc()
            raise TooManyConnections(
                f"this server holds its maximum of {self.maximum} connections; retry shortly",
                retry_after=CONNECTIONS_RETRY_AFTER,
            )
        self.open += 1

    def release(self) -> None:
        if self.open <= 0:
            raise RuntimeError("released a connection slot that was never acquired")
        self.open -= 1


def retry_after_header(seconds: float) -> str:
    """HTTP's Retry-After is whole seconds: round up, never 0 (that would invite a hot loop)."""
    return str(max(1, math.ceil(seconds)))


def report_configured(settings: Settings) -> None:
    """Expose the configured limits as `realtime_limit{limit}` so dashboards can show hits against them."""
    configured = {
        "connections": settings.max_connections,
        "subscriptions": settings.max_subscriptions,
        "ws_messages_per_second": settings.ws_messages_per_second,
        "ws_message_burst": settings.ws_message_burst,
        "publish_per_second": settings.publish_per_second,
        "publish_burst": settings.publish_burst,
        "frame_bytes": settings.max_frame_bytes,
        "event_bytes": settings.max_event_bytes,
        "redis_connections": settings.redis_max_connections if settings.redis_url else 0,
    }
    for name, value in configured.items():
        metrics.LIMITS.labels(limit=name).set(value)


class MessageRate:
    """One WebSocket's client-frame rate (WS_MESSAGES_PER_SECOND, WS_MESSAGE_BURST).

    A frame over the rate is refused with a `rate_limited` error and not handled; the socket
    stays open unless refusals persist: `2 * burst` refused in a row close it (1008), because a
    client that keeps sending into a refusal is not going to slow down by itself.
    """

    def __init__(self, rate: float, burst: int, *, clock: Clock = time.monotonic) -> None:
        self._bucket = TokenBucket(rate, burst, clock=clock)
        self.close_after = 2 * burst
        self.refused_in_a_row = 0

    def check(self) -> RateLimited | None:
        """None when the frame may be handled; else the error to send (already counted)."""
        wait = self._bucket.take()
        if wait == 0:
            self.refused_in_a_row = 0
            return None
        self.refused_in_a_row += 1
        metrics.LIMIT_HITS.labels(limit="ws_message_rate").inc()
        return RateLimited(f"more than {self._bucket.rate:g} frames per second; this frame was not handled",
                           retry_after=wait)

    @property
    def persistent(self) -> bool:
        """Refused long enough that the socket should be closed."""
        return self.refused_in_a_row >= self.close_after
