"""The notification routes of the contract (section 7). Users act on their own inbox only (the
token's tenant and `sub`); creating needs a service token."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Response
from fastapi.responses import JSONResponse
from pydantic import StringConstraints

from app import tracing
from app.auth import Principal
from app.deps import BearerDep, DbDep, PublisherDep, ServicesDep, TraceparentHeader, TracestateHeader
from app.notifications import preferences, store
from app.notifications.inbox import Change, Inbox
from app.notifications.schemas import (
    ACTION_ID_PATTERN,
    CATEGORY_PATTERN,
    TAG_PATTERN,
    ArchiveAllIn,
    Bulk,
    BulkIn,
    Changed,
    Counts,
    NotificationIn,
    NotificationOut,
    Page,
    Preferences,
    PreferencesIn,
    SnoozeIn,
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


_409 = _error("An action was already taken on this notification.", "conflict", "an action was already taken: review")
_422_SNOOZE = _error("`until` is in the past, more than 90 days ahead, or has no time zone.", "invalid_event",
                     "`until` must be in the future")


async def get_inbox(services: ServicesDep, db: DbDep, traceparent: TraceparentHeader = None,
                    tracestate: TracestateHeader = None) -> Inbox:
    parent = tracing.parent(traceparent, tracestate) if services.tracing is not None else tracing.NO_PARENT
    return Inbox(db, outbox=services.outbox, settings=services.settings, parent=parent)


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
    tag: Annotated[list[Annotated[str, StringConstraints(pattern=TAG_PATTERN)]] | None,
                   Query(max_length=10, description="Repeatable: every tag given must be on it.")] = None,
) -> Page:
    """`status`: `unread`, `unseen`, `all` (everything not archived and not snoozed), `archived` or
    `snoozed`. Snoozed and deleted notifications are in no other list."""
    after = store.Position.decode(cursor) if cursor else None
    rows, last = await store.page(db, principal.tenant, principal.user, status=status, category=category,
                                  limit=limit, after=after, tags=tag or ())
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


@router.post("/{notification_id}/unarchive", response_model=NotificationOut, summary="Back in the inbox from the archive",
             responses={404: _404, **_ERRORS})
async def unarchive(notification_id: NotificationId, principal: BearerDep, inbox: InboxDep) -> NotificationOut:
    return await _mark(inbox, principal, notification_id, "unarchive")


@router.post("/archive-all", response_model=Changed, summary="Archive everything in the inbox (or only what is read)",
             responses={400: _400_BODY, **_ERRORS})
async def archive_all(principal: BearerDep, inbox: InboxDep,
                      body: Annotated[ArchiveAllIn | None, Body()] = None) -> Changed:
    result = await inbox.archive_all(principal.tenant, principal.user, only_read=body is not None and body.status == "read")
    return Changed(changed=result["updated"], counts=Counts(**result["counts"]))


@router.post("/bulk", response_model=Changed, summary="One change to up to 100 notifications",
             responses={400: _400_BODY, **_ERRORS})
async def bulk(body: BulkIn, principal: BearerDep, inbox: InboxDep, db: DbDep) -> Changed:
    """Ids that are not the caller's (or do not exist) are skipped; `changed` counts the rest that
    were not already so. Announced once (`notification.deleted` once per id)."""
    changed = await inbox.bulk(principal.tenant, principal.user, body.ids, body.action)
    return Changed(changed=changed, counts=Counts(**await store.counts(db, principal.tenant, principal.user)))


@router.delete("/{notification_id}", status_code=204, summary="Delete (gone from every list and count)",
               responses={404: _404, **_ERRORS})
async def delete(notification_id: NotificationId, principal: BearerDep, inbox: InboxDep) -> Response:
    """Announced as `notification.deleted`. Its idempotency key keeps answering with it (200)."""
    await inbox.delete(principal.tenant, principal.user, notification_id)
    return Response(status_code=204)


@router.post("/{notification_id}/snooze", response_model=NotificationOut, summary="Hide until a time, then back unread",
             responses={404: _404, 422: _422_SNOOZE, 400: _400_BODY, **_ERRORS})
async def snooze(notification_id: NotificationId, body: SnoozeIn, principal: BearerDep, inbox: InboxDep) -> NotificationOut:
    """In no list but `status=snoozed` and in no count until `until`; then back as unread and
    announced as `notification.unsnoozed` (once, whichever process is up)."""
    row = await inbox.snooze(principal.tenant, principal.user, notification_id, body.until)
    return NotificationOut(**row.to_json())


@router.post("/{notification_id}/unsnooze", response_model=NotificationOut, summary="Back in the inbox now, unread",
             responses={404: _404, **_ERRORS})
async def unsnooze(notification_id: NotificationId, principal: BearerDep, inbox: InboxDep) -> NotificationOut:
    return NotificationOut(**(await inbox.unsnooze(principal.tenant, principal.user, notification_id)).to_json())


@router.post("/{notification_id}/actions/{action_id}", response_model=NotificationOut,
             summary="Record the action the user took (once), and mark it read",
             responses={404: _error("No such notification, or no such action on it.", "not_found",
                                    "no such action on this notification"), 409: _409, **_ERRORS})
async def act(notification_id: NotificationId, action_id: Annotated[str, Path(pattern=ACTION_ID_PATTERN)],
              principal: BearerDep, inbox: InboxDep) -> NotificationOut:
    return NotificationOut(**(await inbox.act(principal.tenant, principal.user, notification_id, action_id)).to_json())
