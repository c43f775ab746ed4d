"""The demo page's development-only helpers: sign in as any demo user, publish sample events.

The page itself (`/demo`, static files built from clients/js) is served always; it holds no
secret and, where these helpers are off, signs in with a pasted token. The helpers mint tokens
with the service's own HS256 secret, so they exist only when `Settings.demo_enabled`: DEMO_TOKENS
unset and JWT_SECRET unset (the generated development secret), or DEMO_TOKENS=true. Production
sets JWT_SECRET (or uses public keys), which turns them off; DEMO_TOKENS=false turns them off
anywhere. Off, the routes are not there at all.

Samples are published through the service's own public API (an in-process HTTP client, with a
service token minted here), so the demo shows exactly what a backend worker would do.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any, Literal

import httpx
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from app.auth import mint_token
from app.errors import ServiceError
from app.settings import Settings

STATIC_DIR = Path(__file__).parent / "static" / "demo"
REPOSITORY = "repository:demo"  # what the page's "who is viewing" shows
CURRENT_RUN = "analysis:demo"  # live state: the latest `demo.run` names the run to show
DEMO_CHANNELS = ["repository:*", "analysis:*", "job:*"]
STEP_SECONDS = 0.4  # between two steps of a sample run


class DemoToken(BaseModel):
    user: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$", description="Any name: demo users need no account.")
    ttl: int | None = Field(None, ge=30, le=86_400, description="Seconds; default DEMO_TOKEN_TTL_SECONDS.")


class DemoTokenOut(BaseModel):
    token: str
    user: str
    tenant: str
    expires_in: int


class DemoPublish(BaseModel):
    kind: Literal["run", "notification", "alert"]
    user: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$", description="Whose notification (the signed-in user).")


def router(settings: Settings) -> APIRouter:
    """The helpers' routes, or none at all when they are off."""
    api = APIRouter(prefix="/demo", tags=["demo (development only)"])
    if not settings.demo_enabled:
        return api
    tenant = settings.demo_tenant
    running: set[asyncio.Task[None]] = set()

    @api.post("/token", response_model=DemoTokenOut, summary="Sign in as a demo user (development only)")
    async def token(body: DemoToken) -> DemoTokenOut:
        ttl = body.ttl or settings.demo_token_ttl_seconds
        return DemoTokenOut(token=mint_token(settings, user=body.user, tenant=tenant, ttl=ttl, channels=DEMO_CHANNELS),
                            user=body.user, tenant=tenant, expires_in=ttl)

    @api.post("/publish", status_code=202, summary="Publish sample events (development only)")
    async def publish(body: DemoPublish, request: Request) -> dict[str, Any]:
        service = _Service(request, settings)
        if body.kind == "notification":
            note = await service.notify(body.user, "Someone mentioned you",
                                        f"{body.user}, have a look at the refactoring plan for the demo repository.",
                                        actions=[{"id": "open", "label": "Open the plan", "url": "/demo/"},
                                                 {"id": "later", "label": "Later"}],
                                        tags=["mention", "repo:demo"])
            return {"notification": note["id"]}
        if body.kind == "alert":
            return await service.event(f"tenant:{tenant}", "system.alert",
                                       {"severity": "info", "message": "Maintenance window tonight at 22:00 UTC."})
        run = f"run-{secrets.token_hex(3)}"
        task = asyncio.create_task(_sample_run(service, run, body.user), name=f"demo-{run}")
        running.add(task)
        task.add_done_callback(running.discard)
        return {"analysis": f"analysis:{run}", "job": f"job:{run}"}

    return api


class _Service:
    """POSTs to this app's own public API with a freshly minted service token."""

    def __init__(self, request: Request, settings: Settings) -> None:
        self.app, self.tenant = request.app, settings.demo_tenant
        token = mint_token(settings, user="demo-publisher", tenant=self.tenant, ttl=300, scope="publish")
        self.headers = {"Authorization": f"Bearer {token}"}

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://demo") as http:
            response = await http.post(path, json=body, headers=self.headers)
        if response.status_code >= 400:
            raise _Failed(f"{path} answered {response.status_code}: {response.text[:200]}")
        return response.json()

    async def event(self, channel: str, type_: str, data: dict[str, Any]) -> dict[str, Any]:
        return await self.post("/v1/events", {"tenant": self.tenant, "channel": channel, "type": type_, "data": data})

    async def notify(self, user: str, title: str, message: str, *, actions: list[dict[str, str]] | None = None,
                     tags: list[str] | None = None) -> dict[str, Any]:
        return await self.post("/v1/notifications", {"tenant": self.tenant, "user_id": user, "type": "demo.mention",
                                                     "category": "demo", "title": title, "message": message,
                                                     "action_url": "/demo/", "actions": actions or [],
                                                     "tags": tags or []})


class _Failed(ServiceError):
    status, code = 502, "demo_publish_failed"


async def _sample_run(service: _Service, run: str, user: str) -> None:
    """What an analysis worker would send: the job queued and running, progress in steps, the job
    completed, then a notification for whoever started it."""
    await service.event(CURRENT_RUN, "demo.run", {"analysisId": run, "jobId": run, "startedBy": user})
    await service.event(f"job:{run}", "refactoring.status", {"jobId": run, "status": "queued"})
    await asyncio.sleep(STEP_SECONDS)
    await service.event(f"job:{run}", "refactoring.status", {"jobId": run, "status": "running"})
    for progress in range(0, 101, 10):
        await service.event(f"analysis:{run}", "analysis.progress", {"analysisId": run, "progress": progress})
        await asyncio.sleep(STEP_SECONDS)
    await service.event(f"job:{run}", "refactoring.status", {"jobId": run, "status": "completed", "changedFiles": 12})
    await service.notify(user, f"Analysis {run} finished", "12 files can be refactored. Review the plan.",
                         actions=[{"id": "review", "label": "Review the plan", "url": "/demo/"}],
                         tags=["analysis", "repo:demo"])
