"""What operators poll: liveness, readiness of the engine and database, Prometheus metrics."""

from __future__ import annotations

import asyncio
import hmac
from functools import cache
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.deps import ServicesDep, bearer_token
from app.errors import Unauthorized

router = APIRouter(tags=["operators"])
ASYNCAPI = Path(__file__).resolve().parent.parent / "static" / "asyncapi.yaml"  # package data (docs/ links to it)


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="The event log engine answers (and how the database is)",
            responses={200: {"description": "`ok`, or `degraded`: the database is unreachable, so the notification "
                                            "and push routes answer 503 while real-time delivery goes on. Not a reason "
                                            "to take the process out of the load balancer: every process shares the "
                                            "database, and real-time clients would have nowhere to go.",
                             "content": {"application/json": {"examples": {
                                 "ok": {"value": {"status": "ok", "engine": "ok", "database": "ok"}},
                                 "degraded": {"value": {"status": "degraded", "engine": "ok",
                                                        "database": "error: TimeoutError"}}}}}},
                       503: {"description": "The event log engine is unreachable (`unavailable`), or the process is "
                                            "shutting down (`draining`, after SIGTERM): route new clients elsewhere.",
                             "content": {"application/json": {"examples": {
                                 "unavailable": {"value": {"status": "unavailable", "engine": "error: ConnectionError",
                                                           "database": "ok"}},
                                 "draining": {"value": {"status": "draining"}}}}}}})
async def readyz(services: ServicesDep) -> JSONResponse:
    if services.drain.active:  # a load balancer stops sending clients here while they move elsewhere
        return JSONResponse({"status": "draining"}, status_code=503)
    checks = {"engine": services.log.ping(), "database": services.db_ping()}
    results: dict[str, str] = {}
    for name, check in checks.items():
        try:
            await asyncio.wait_for(check, 2.0)
            results[name] = "ok"
        except Exception as exc:  # reported, never raised: readiness is an answer, not a failure
            results[name] = f"error: {type(exc).__name__}"
    if results["engine"] != "ok":
        return JSONResponse({"status": "unavailable", **results}, status_code=503)
    return JSONResponse({"status": "ok" if results["database"] == "ok" else "degraded", **results})


# An optional header, not a security scheme: the route is open unless the operator set a token,
# and the document must not claim otherwise.
@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={401: {"description": "METRICS_TOKEN is set and the request does not carry it.",
                             "content": {"application/json": {"example": {
                                 "code": "unauthorized", "message": "send Authorization: Bearer <METRICS_TOKEN>"}}}}})
async def metrics(services: ServicesDep, authorization: Annotated[str | None, Header(
        description="`Bearer <METRICS_TOKEN>`, needed only when the operator set METRICS_TOKEN (not a JWT).")] = None,
                  ) -> Response:
    expected = services.settings.metrics_token
    if expected is not None:
        given = bearer_token(authorization)
        if given is None or not hmac.compare_digest(given.encode(), expected.encode()):  # in constant time
            raise Unauthorized("send Authorization: Bearer <METRICS_TOKEN>")
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@cache
def _asyncapi() -> bytes:
    return ASYNCAPI.read_bytes()


@router.get("/asyncapi.yaml", include_in_schema=False)
async def asyncapi() -> Response:
    """The AsyncAPI 3 document of the WebSocket and SSE channels: what OpenAPI cannot describe."""
    return Response(_asyncapi(), media_type="application/yaml")
