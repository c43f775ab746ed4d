"""The notification routes of the contract (section 7). Users act on their own inbox only (the
token's tenant and `sub`); creating needs a service token."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import JSONResponse

from app.auth import Principal
from app.deps import BearerDep, DbDep, PublisherDep, ServicesDep
from app.notifications import preferences, store
from app.notifications.inbox import Change, Inbox
from app.notifications.schemas import (
    CATEGORY_PATTERN,
    Bulk,
    Counts,
    NotificationIn,
    NotificationOut,
    Page,
    Preferences,
    PreferencesIn,
    Status,
    UnreadCount,
)

router = APIRouter(prefix="/v1/notifications", tags=["notifications"])


def _error(description: str, code: str, message: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"example": {"code": code, "message": message}}}}


_401 = _error("Missing, invalid or expired token.", "unauthorized", "send Authorization: Bearer <jwt>")
_404 = _error("Not a notification of this user (another user's or tenant's included).", "not_found", "no such notification")
_503 = _error("The database is unreachable (real-time routes keep working).", "unavailable",
              "the database is unavailable; try again shortly")
_ERRORS: dict[int | str, dict[str, Any]] = {401: _401, 503: _503}
# FastAPI's own answer, before validation, to a body it cannot even decode (e.g. bytes that look
# like UTF-16 or UTF-32 JSON but are not); a body that decodes but is not valid JSON is a 422.
_400_BODY: dict[str, Any] = {"description": "The body could not be decoded as JSON (send UTF-8).",
                             "content": {"application/json": {"example": {"detail": "There was an error parsing the body"}}}}


async def get_inbox(services: ServicesDep, db: DbDep) -> Inbox:
    return Inbox(db, log=services.log, queue=services.push_queue, settings=services.settings)


InboxDep = Annotated[Inbox, Depends(get_inbox)]
NotificationId = Annotated[str, Path(max_length=64)]


@router.post("", response_model=NotificationOut, status_code=201, summary="Create a notification (service token)",
             responses={200: {"description": "The idempotency key was used before: the first notification.",
                              "model": NotificationOut},
                        201: {"description": "Stored, announced on `user:<id>`, queued for Web Push."},
                        403: _error("Not a service token.", "forbidden", "publishing needs a service token (scope 'publish')"),
                        400: _400_BODY,
                        413: _error("The notification's event would exceed MAX_EVENT_BYTES.", "event_too_large",
                                    "event is 70000 bytes; the limit is 65536"),
                        **_ERRORS})
async def create(body: NotificationIn, inbox: InboxDep, principal: PublisherDep) -> JSONResponse:
    row, created = await inbox.create(body)
    return JSONResponse(row.to_json(), status_code=201 if created else 200)


@router.get("", response_model=Page, summary="The caller's notifications, newest first",
            responses={400: _error("`cursor` is not a `next_cursor` this API returned.", "bad_cursor",
                                   "not a cursor this API returned"), **_ERRORS})
async def list_notifications(
    principal: BearerDep,
    db: DbDep,
    status: Status = "all",
    category: Annotated[str | None, Query(pattern=CATEGORY_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=512, description="`next_cursor` of the previous page.")] = None,
) -> Page:
    """`status`: `unread`, `unseen`, `all` (everything not archived) or `archived`."""
    after = store.Position.decode(cursor) if cursor else None
    rows, last = await store.page(db, principal.tenant, principal.user, status=status, category=category,
                                  limit=limit, after=after)
    return Page(items=[NotificationOut(**row.to_json()) for row in rows], next_cursor=last.encode() if last else None)


@router.get("/unread-count", response_model=UnreadCount, summary="The unread badge", responses=_ERRORS)
async def unread_count(principal: BearerDep, db: DbDep) -> UnreadCount:
    return UnreadCount(count=await store.unread_count(db, principal.tenant, principal.user))


@router.get("/counts", response_model=Counts, summary="Unread, unseen and total (not archived)", responses=_ERRORS)
async def counts(principal: BearerDep, db: DbDep) -> Counts:
    return Counts(**await store.counts(db, principal.tenant, principal.user))


@router.get("/preferences", response_model=Preferences, summary="The caller's category × channel switches",
            responses=_ERRORS)
async def get_preferences(services: ServicesDep, principal: BearerDep, db: DbDep) -> Preferences:
    switches = await preferences.load(db, principal.tenant, principal.user)
    return Preferences(categories=switches, critical_categories=sorted(services.settings.critical_categories))


@router.put("/preferences", response_model=Preferences, summary="Replace the caller's switches",
            responses={400: _400_BODY,
                       422: _error("A critical category cannot be turned off.", "critical_category",
                                   "critical categories cannot be turned off: security"), **_ERRORS})
async def put_preferences(body: PreferencesIn, services: ServicesDep, principal: BearerDep, db: DbDep) -> Preferences:
    async with db.begin():
        await preferences.replace(db, principal.tenant, principal.user, body.categories,
                                  services.settings.critical_categories)
    return await get_preferences(services, principal, db)


@router.post("/read-all", response_model=Bulk, summary="Mark every unread notification read",
             responses=_ERRORS)
async def read_all(principal: BearerDep, inbox: InboxDep) -> Bulk:
    return Bulk(**await inbox.read_all(principal.tenant, principal.user))


@router.post("/seen-all", response_model=Bulk, summary="Mark every notification seen (clears the badge)",
             responses=_ERRORS)
async def seen_all(principal: BearerDep, inbox: InboxDep) -> Bulk:
    return Bulk(**await inbox.seen_all(principal.tenant, principal.user))


async def _mark(inbox: Inbox, principal: Principal, notification_id: str, change: Change) -> NotificationOut:
    return NotificationOut(**(await inbox.mark(principal.tenant, principal.user, notification_id, change)).to_json())


@router.post("/{notification_id}/read", response_model=NotificationOut, summary="Mark read (and seen)",
             responses={404: _404, **_ERRORS})
async def read(notification_id: NotificationId, principal: BearerDep, inbox: InboxDep) -> NotificationOut:
    return await _mark(inbox, principal, notification_id, "read")


@router.post("/{notification_id}/unread", response_model=NotificationOut, summary="Mark unread",
             responses={404: _404, **_ERRORS})
async def unread(notification_id: NotificationId, principal: BearerDep, inbox: InboxDep) -> NotificationOut:
    return await _mark(inbox, principal, notification_id, "unread")


@router.post("/{notification_id}/archive", response_model=NotificationOut, summary="Archive",
             responses={404: _404, **_ERRORS})
async def archive(notification_id: NotificationId, principal: BearerDep, inbox: InboxDep) -> NotificationOut:
    return await _mark(inbox, principal, notification_id, "archive")
