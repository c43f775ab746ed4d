"""Prometheus metrics, named once here so every module counts the same way."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CONNECTIONS = Gauge("realtime_connections", "Open client connections", ["transport"])
SUBSCRIPTIONS = Gauge("realtime_subscriptions", "Channel subscriptions held by open connections")
PUBLISHED = Counter("realtime_events_published_total", "Events appended to the log", ["source"])
DELIVERED = Counter("realtime_events_delivered_total", "Events handed to a client transport", ["transport"])
MALFORMED = Counter("realtime_malformed_entries_total", "Log or ingest entries refused and kept aside", ["source"])
INGEST_BACKLOG = Gauge(
    "realtime_ingest_backlog_entries",
    "Worker ingest entries waiting, as the process draining it (the lease holder) last saw them: unread (not yet "
    "read by any drainer: XINFO GROUPS lag) and pending (read, not yet stored and acknowledged). Other processes "
    "report 0: take the max over processes",
    ["state"],
)
SLOW_CONSUMERS = Counter("realtime_slow_consumers_total", "Connections cut off for falling behind", ["transport"])
DROPPED = Counter(
    "realtime_events_dropped_total",
    "Events a process dropped from a connection's queue: slow_consumer (the connection was cut off; "
    "its client resumes from its cursor), replay_overflow (it was replaying; the replay reads them "
    "from the log again). Neither is lost from the log.",
    ["transport", "reason"],
)
DELIVERY_FAILURES = Counter(
    "realtime_delivery_failures_total",
    "Connections the fan-out closed because handing them an event raised (a bug: the log says which); "
    "every other connection still got the event",
    ["transport"],
)
WRITE_PATH = Gauge(
    "realtime_write_path",
    "1 for the way live events reach sockets in this process: direct (the hub writes each event's frame, "
    "encoded once, to uvicorn's transport) or asgi (through each connection's ASGI send)",
    ["transport", "path"],
)
RESUMES = Counter("realtime_resumes_total", "Connections that resumed from a cursor")
RESETS = Counter("realtime_resets_total", "Resumes whose cursor was older than the log's history")
REPLAYED = Counter("realtime_events_replayed_total", "Events delivered from history on resume")
NOTIFICATIONS = Counter("realtime_notifications_created_total", "Notifications stored (idempotent repeats excluded)")
OUTBOX_PUBLISHED = Counter("realtime_outbox_published_total", "Outbox rows (inbox events) published to the log")
OUTBOX_DEFERRED = Counter("realtime_outbox_deferred_total",
                          "Inbox changes whose writer could not publish its event after the commit (the relay did)")
OUTBOX_RELAY_ERRORS = Counter("realtime_outbox_relay_errors_total", "Outbox relay turns that failed (retried)")
SNOOZES_RELEASED = Counter("realtime_snoozes_released_total", "Snoozed notifications back in the inbox when due")
PUSH_RESULTS = Counter(
    "realtime_push_results_total",
    "Web Push sends by outcome: delivered, gone (subscription deleted), retry, failed (given up), "
    "rejected (refused, dropped), vapid_rejected (401/403: our VAPID setup is wrong; alert on it)",
    ["result"],
)
LATENCY = Histogram(
    "realtime_publish_to_dispatch_seconds",
    "Time from the log's id timestamp to fan-out in this process",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)

# Operator-set limits (app.limits). Every series exists from the start at 0, so an alert on
# `increase(realtime_limit_hits_total[5m]) > 0` needs no "absent" special case.
LIMIT_NAMES = ("connections", "subscriptions", "ws_message_rate", "publish_rate", "frame_size", "payload_size",
               "redis_pool")
LIMIT_HITS = Counter(
    "realtime_limit_hits_total",
    "Requests, frames or connections refused because an operator-set limit was reached: connections "
    "(MAX_CONNECTIONS), subscriptions (MAX_SUBSCRIPTIONS), ws_message_rate (WS_MESSAGES_PER_SECOND), "
    "publish_rate (PUBLISH_PER_SECOND), frame_size (MAX_FRAME_BYTES), payload_size (MAX_EVENT_BYTES), "
    "redis_pool (REDIS_MAX_CONNECTIONS all busy for REDIS_POOL_TIMEOUT: a Redis call gave up waiting)",
    ["limit"],
)
for _name in LIMIT_NAMES:
    LIMIT_HITS.labels(limit=_name)
LIMITS = Gauge(
    "realtime_limit",
    "The limits this process was configured with (0: unlimited); per connection, per token or per process "
    "as their variables say",
    ["limit"],
)

# The Redis engine as clients meet it (app.redis_client). Every kind exists from the start at 0.
ENGINE_FAILURE_KINDS = ("pool_exhausted", "timeout", "unreachable", "not_replicated", "history_lost", "mixed_layouts")
ENGINE_FAILURES = Counter(
    "realtime_engine_failures_total",
    "Requests and connections answered with an error because a Redis call failed: pool_exhausted (no free "
    "connection in this process within REDIS_POOL_TIMEOUT) and timeout (no reply within REDIS_SOCKET_TIMEOUT) "
    "answer `busy`; unreachable (connection refused or lost) answers `unavailable`; not_replicated (fewer than "
    "REDIS_WAIT_REPLICAS acknowledged an append in time) answers `not_replicated`; history_lost counts the times "
    "the log may have lost acknowledged entries (a failover, a Redis that lost its data): every connection is reset; "
    "mixed_layouts counts processes of another REDIS_PARTITIONS count seen running on the same Redis and prefix",
    ["kind"],
)
for _name in ENGINE_FAILURE_KINDS:
    ENGINE_FAILURES.labels(kind=_name)
REDIS_POOL = Gauge(
    "realtime_redis_pool_connections",
    "Connections of this process's Redis pool: in_use (lent to a command, or held by a blocking read) and idle "
    "(kept for the next command; closed after REDIS_POOL_IDLE_SECONDS beyond REDIS_POOL_MIN_IDLE)",
    ["state"],
)
REDIS_POOL_REAPED = Counter(
    "realtime_redis_pool_reaped_total",
    "Idle Redis connections closed because they sat unused longer than REDIS_POOL_IDLE_SECONDS",
)
