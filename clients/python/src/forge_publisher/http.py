"""Publish over HTTP with a service token (a JWT with scope `publish`): `POST /v1/events` and
`POST /v1/notifications`. Needs httpx: `pip install 'forge-realtime-publisher[http]'`.

    from forge_publisher import HttpPublisher

    with HttpPublisher("https://realtime.example", token=SERVICE_JWT, tenant="org_123") as events:
        event_id = events.progress("a1", 42)
        note = events.notify("u1", "pr.created", "New pull request", "Ada opened #42",
                             action_url="/org_123/repo_456/pulls/42", category="pull_requests",
                             actions=[{"id": "review", "label": "Review"}], tags=["pr"],
                             idempotency_key="pr-42-created")

For a worker that cannot reach the service's Redis. Every answer that is not a success raises
the named error of its code (`forge_publisher.errors`); what the service would refuse is refused
before anything is sent (`local=True`). `token` may be a callable, asked before every request, so
a token that expires can be replaced. `AsyncHttpPublisher` is the same over `httpx.AsyncClient`.
A client of your own (`client=`: its proxies, TLS, timeouts, transport) is used and not closed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, cast

import httpx

from forge_publisher import rules
from forge_publisher.errors import PublishError, error_from_answer
from forge_publisher.events import Action, Notification, TypedHelpers, check_event, encode, notification_body

EVENTS_PATH = "/v1/events"
NOTIFICATIONS_PATH = "/v1/notifications"
DEFAULT_TIMEOUT = 10.0


class _Http:
    """What the sync and async publishers share: the requests they make and how they read answers."""

    def __init__(self, url: str, token: str | Callable[[], str], tenant: str, *,
                 max_event_bytes: int | None) -> None:
        self.url, self.tenant, self.max_event_bytes = url.rstrip("/"), tenant, max_event_bytes
        self._token = token

    def _headers(self, traceparent: str | None = None) -> dict[str, str]:
        token = self._token() if callable(self._token) else self._token
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json", "Accept": "application/json"}
        if traceparent:  # W3C trace context: the service's publish span (TRACING on) is its child
            headers["traceparent"] = traceparent
        return headers

    def _event(self, channel: str, type_: str, data: Mapping[str, Any] | None, idempotency_key: str | None) -> bytes:
        event = check_event(self.tenant, channel, type_, data, idempotency_key=idempotency_key,
                            max_event_bytes=self.max_event_bytes)
        # the checked encoding itself, so the size counted is the size sent
        body = b'{"tenant":%s,"channel":%s,"type":%s,"data":%s' % (
            encode(event.tenant), encode(event.channel), encode(event.type), event.data)
        if event.idempotency_key is not None:
            body += b',"idempotency_key":' + encode(event.idempotency_key)
        return body + b"}"

    def _notification(self, user_id: str, type_: str, title: str, message: str, action_url: str | None,
                      data: Mapping[str, Any] | None, category: str | None, idempotency_key: str | None,
                      actions: Sequence[Action], tags: Iterable[str]) -> bytes:
        return notification_body(self.tenant, user_id, type_, title, message, action_url=action_url, data=data,
                                 category=category, idempotency_key=idempotency_key, actions=actions, tags=tags)

    @staticmethod
    def _answer(response: httpx.Response, expect: tuple[int, ...]) -> Any:
        if response.status_code in expect:
            return response.json()
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        raise error_from_answer(response.status_code, body, response.headers.get("Retry-After"))

    @staticmethod
    def _event_id(answer: Any) -> str:
        if not isinstance(answer, dict) or not isinstance(answer.get("id"), str):
            raise PublishError(f"the service answered a publish without an id: {answer!r}"[:300])
        return cast(str, answer["id"])


class HttpPublisher(_Http, TypedHelpers[str]):
    """Synchronous. `publish` and the typed helpers return the event's id (its cursor); `notify`
    the stored notification (the first one again when its idempotency key was used before)."""

    def __init__(self, url: str, token: str | Callable[[], str], tenant: str, *, timeout: float = DEFAULT_TIMEOUT,
                 client: httpx.Client | None = None,
                 max_event_bytes: int | None = rules.DEFAULT_MAX_EVENT_BYTES) -> None:
        super().__init__(url, token, tenant, max_event_bytes=max_event_bytes)
        self._own = client is None
        self.client = client if client is not None else httpx.Client(timeout=timeout)

    def publish(self, channel: str, type_: str, data: Mapping[str, Any] | None = None, *,
                idempotency_key: str | None = None, traceparent: str | None = None) -> str:
        body = self._event(channel, type_, data, idempotency_key)
        response = self.client.post(self.url + EVENTS_PATH, content=body, headers=self._headers(traceparent))
        return self._event_id(self._answer(response, (202,)))

    def notify(self, user_id: str, type_: str, title: str, message: str = "", *, action_url: str | None = None,
               data: Mapping[str, Any] | None = None, category: str | None = None, idempotency_key: str | None = None,
               actions: Sequence[Action] = (), tags: Iterable[str] = (), traceparent: str | None = None) -> Notification:
        """Create a notification for `user_id` of this tenant; delivered live as
        `notification.created` on `user:<user_id>`, and by Web Push where the user allows it."""
        body = self._notification(user_id, type_, title, message, action_url, data, category, idempotency_key, actions, tags)
        response = self.client.post(self.url + NOTIFICATIONS_PATH, content=body, headers=self._headers(traceparent))
        return cast(Notification, self._answer(response, (200, 201)))

    def close(self) -> None:
        if self._own:
            self.client.close()

    def __enter__(self) -> HttpPublisher:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class AsyncHttpPublisher(_Http, TypedHelpers[Awaitable[str]]):
    """Asynchronous; as `HttpPublisher`. Local checks raise when a method is called, before
    anything is awaited."""

    def __init__(self, url: str, token: str | Callable[[], str], tenant: str, *, timeout: float = DEFAULT_TIMEOUT,
                 client: httpx.AsyncClient | None = None,
                 max_event_bytes: int | None = rules.DEFAULT_MAX_EVENT_BYTES) -> None:
        super().__init__(url, token, tenant, max_event_bytes=max_event_bytes)
        self._own = client is None
        self.client = client if client is not None else httpx.AsyncClient(timeout=timeout)

    def publish(self, channel: str, type_: str, data: Mapping[str, Any] | None = None, *,
                idempotency_key: str | None = None, traceparent: str | None = None) -> Awaitable[str]:
        return self._publish(self._event(channel, type_, data, idempotency_key), traceparent)

    async def _publish(self, body: bytes, traceparent: str | None) -> str:
        response = await self.client.post(self.url + EVENTS_PATH, content=body, headers=self._headers(traceparent))
        return self._event_id(self._answer(response, (202,)))

    def notify(self, user_id: str, type_: str, title: str, message: str = "", *, action_url: str | None = None,
               data: Mapping[str, Any] | None = None, category: str | None = None, idempotency_key: str | None = None,
               actions: Sequence[Action] = (), tags: Iterable[str] = (),
               traceparent: str | None = None) -> Awaitable[Notification]:
        return self._notify(self._notification(user_id, type_, title, message, action_url, data, category,
                                               idempotency_key, actions, tags), traceparent)

    async def _notify(self, body: bytes, traceparent: str | None) -> Notification:
        response = await self.client.post(self.url + NOTIFICATIONS_PATH, content=body, headers=self._headers(traceparent))
        return cast(Notification, self._answer(response, (200, 201)))

    async def aclose(self) -> None:
        if self._own:
            await self.client.aclose()

    async def __aenter__(self) -> AsyncHttpPublisher:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()
