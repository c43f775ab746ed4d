"""Publishing over HTTP (service tokens) and one-time tickets for browsers."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from app import metrics
from app.core.publish import prepare
from app.deps import BearerDep, PublisherDep, ServicesDep, TraceparentHeader, TracestateHeader
from app.rules import CHANNEL_PATTERN, IDEMPOTENCY_KEY_MAX, TENANT_PATTERN, TYPE_PATTERN

router = APIRouter(tags=["publishing"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Bad channel name or event type.",
          "content": {"application/json": {"example": {
              "code": "bad_channel", "message": "invalid channel name 'Bad Channel': expected namespace:id"}}}},
    401: {"description": "Missing, invalid or expired token.",
          "content": {"application/json": {"example": {"code": "unauthorized", "message": "send Authorization: Bearer <jwt>"}}}},
    403: {"description": "Not a service token.",
          "content": {"application/json": {"example": {
              "code": "forbidden", "message": "publishing needs a service token (scope 'publish')"}}}},
    429: {"description": "`rate_limited`: this token (its tenant and subject) published more than PUBLISH_PER_SECOND "
                         "(after a PUBLISH_BURST); wait `Retry-After` seconds.",
          "headers": {"Retry-After": {"description": "Whole seconds to wait.", "schema": {"type": "integer"}}},
          "content": {"application/json": {"example": {"code": "rate_limited", "retry_after": 0.001,
                                                       "message": "more than 1000 publishes per second with this token"}}}},
    413: {"description": "Event larger than MAX_EVENT_BYTES.",
          "content": {"application/json": {"example": {
              "code": "event_too_large", "message": "event is 70000 bytes; the limit is 65536"}}}},
    409: {"description": "A typed event would move backwards (progress lower than accepted, a job status out of order "
                         "or out of a final state).",
          "content": {"application/json": {"example": {
              "code": "conflict", "message": "analysis.progress 40 would move backwards from 70", "channel": "analysis:a1"}}}},
    422: {"description": "Invalid event (`invalid_event`: e.g. analysis.progress outside 0-100, an unknown "
                         "refactoring.status or system.alert severity), or JSON the service cannot store or encode as sent "
                         "(`unrepresentable_json`: an integer beyond 64 bits, a number that is not finite, a lone surrogate "
                         "or a NUL in a string or key, nesting deeper than 32; the message gives the JSON path).",
          "content": {"application/json": {"examples": {
              "invalid_event": {"value": {
                  "code": "invalid_event", "message": "analysis.progress needs data.progress, a number from 0 to 100"}},
              "unrepresentable_json": {"value": {
                  "code": "unrepresentable_json",
                  "message": "$.data.n is an integer beyond 64 bits (integers must be within -2^63 .. 2^64-1)"}}}}}},
    503: {"description": "Not stored, or not promised: `unavailable` (the event log engine is unreachable), `busy` (no "
                         "free connection to it in time, or it answered too slowly), `not_replicated` (stored on the "
                         "primary, but fewer than REDIS_WAIT_REPLICAS replicas had it in time). Retry after `Retry-After` "
                         "with the same `idempotency_key`, so a publish that did go through is not stored twice.",
          "headers": {"Retry-After": {"description": "Whole seconds to wait.", "schema": {"type": "integer"}}},
          "content": {"application/json": {"example": {"code": "not_replicated", "retry_after": 1,
                                                       "message": "stored on the primary, not yet on 1 replica"}}}},
}


class PublishRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "tenant": "org_123", "channel": "analysis:a1", "type": "analysis.progress",
        "data": {"analysisId": "a1", "progress": 42}, "idempotency_key": "a1-progress-42"}]})

    # the patterns are documented, and checked by `prepare` (a 400 bad_channel, or 422 invalid_event for the tenant)
    tenant: str = Field(description="The tenant whose subscribers receive the event.",
                        json_schema_extra={"pattern": TENANT_PATTERN.pattern})
    channel: str = Field(description="`namespace:id`, scoped to the tenant.",
                         json_schema_extra={"pattern": CHANNEL_PATTERN.pattern})
    type: str = Field(description="Event type, e.g. `analysis.progress`.", json_schema_extra={"pattern": TYPE_PATTERN.pattern})
    data: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str | None = Field(None, max_length=IDEMPOTENCY_KEY_MAX,
                                        description="A repeat within 24 h publishes nothing and returns the first id.")


class PublishResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"id": "1764310000000-0"}]})
    id: str


@router.post("/v1/events", status_code=202, response_model=PublishResponse, responses=_ERRORS, summary="Publish an event")
async def publish(body: PublishRequest, services: ServicesDep, principal: PublisherDep,
                  traceparent: TraceparentHeader = None, tracestate: TracestateHeader = None,
                  ) -> PublishResponse:
    settings = services.settings
    draft = prepare(body.tenant, body.channel, body.type, body.data,
                    max_event_bytes=settings.max_event_bytes, state_namespaces=settings.state_namespace_set)
    if services.tracing is None:
        event_id, created = await services.log.append(draft, body.idempotency_key)
    else:
        event_id, created = await services.tracing.append(services.log, draft, body.idempotency_key, source="http",
                                                          traceparent=traceparent, tracestate=tracestate)
    if created:
        metrics.PUBLISHED.labels(source="http").inc()
    return PublishResponse(id=event_id)


class TicketResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"ticket": "Zx8v...", "expires_in": 30}]})
    ticket: str
    expires_in: int


@router.post("/v1/tickets", response_model=TicketResponse, tags=["identity"], responses={401: _ERRORS[401]},
             summary="Trade the bearer token for a one-time ticket (for ?ticket= on WebSocket/SSE)")
async def issue_ticket(services: ServicesDep, principal: BearerDep) -> TicketResponse:
    ticket = await services.tickets.issue(principal)
    return TicketResponse(ticket=ticket, expires_in=services.tickets.ttl)
