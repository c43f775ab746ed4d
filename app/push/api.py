"""Web Push routes: the VAPID public key browsers subscribe with, and their subscriptions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from app.deps import BearerDep, DbDep, ServicesDep
from app.errors import NotFound
from app.push import subscriptions, vapid
from app.push.validation import MAX_ENDPOINT, check_endpoint, check_keys

router = APIRouter(prefix="/v1/push", tags=["web push"])
MAX_EXPIRATION_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: the last instant a datetime (and the database) holds

_401 = {"description": "Missing, invalid or expired token.",
        "content": {"application/json": {"example": {"code": "unauthorized", "message": "send Authorization: Bearer <jwt>"}}}}
_422 = {"description": "Endpoint not on an allowed push service, unusable keys, or JSON the service cannot store as sent "
                      "(`unrepresentable_json`: e.g. a NUL or a lone surrogate in a string).",
        "content": {"application/json": {"example": {
            "code": "endpoint_not_allowed", "message": "endpoint is not on an allowed push service (PUSH_ALLOWED_ENDPOINTS)"}}}}
# FastAPI's own answer to a body it cannot decode (e.g. not UTF-8); a body that is not JSON is a 422.
_400 = {"description": "The body could not be decoded as JSON (send UTF-8).",
        "content": {"application/json": {"example": {"detail": "There was an error parsing the body"}}}}
_503 = {"description": "The database is unreachable.",
        "content": {"application/json": {"example": {
            "code": "unavailable", "message": "the database is unavailable; try again shortly"}}}}


class VapidKey(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"public_key": "BMfEI2-adchrgjLjwk_PelCekgnHcz7s20HeC-4N8ZrJKy2grQ_bAX6xbCt3GDRCdJyf8T32WDTCns5qe96R60I"}]})
    public_key: str = Field(description="base64url `applicationServerKey` for `pushManager.subscribe`.")


class SubscriptionKeys(BaseModel):
    p256dh: str = Field(max_length=128)
    auth: str = Field(max_length=64)


class SubscriptionIn(BaseModel):
    """The browser's `PushSubscription.toJSON()`, as is."""

    model_config = ConfigDict(populate_by_name=True, json_schema_extra={"examples": [{
        "endpoint": "https://fcm.googleapis.com/fcm/send/dQw4w9WgXcQ:APA91b...", "expirationTime": None,
        "keys": {"p256dh": "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1XbjhazAkj7I99e8QcYP7DkM",
                 "auth": "tBHItJI5svbpez7KI4CCXg"}}]})

    endpoint: str = Field(max_length=MAX_ENDPOINT)
    expiration_time: int | None = Field(None, alias="expirationTime", ge=0, le=MAX_EXPIRATION_MS, strict=True,
                                        description="Epoch milliseconds (at most the end of year 9999), or null.")
    keys: SubscriptionKeys


class SubscriptionOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "5b0b6f5e-0d1c-4a8e-9a55-0b8a4e0c2f11", "endpoint": "https://fcm.googleapis.com/fcm/send/dQw4w9WgXcQ:APA91b...",
        "expiration_time": None, "user_agent": "Mozilla/5.0 ...",
        "created_at": "2026-11-28T06:00:00.000Z", "updated_at": "2026-11-28T06:00:00.000Z"}]})

    id: str
    endpoint: str
    expiration_time: str | None
    user_agent: str | None
    created_at: str
    updated_at: str


class SubscriptionList(BaseModel):
    items: list[SubscriptionOut]


@router.get("/vapid-public-key", response_model=VapidKey, responses={401: _401}, summary="The VAPID public key to subscribe with")
async def vapid_public_key(services: ServicesDep, principal: BearerDep) -> VapidKey:
    return VapidKey(public_key=vapid.public_key(services.vapid))


@router.post("/subscriptions", response_model=SubscriptionOut, status_code=201, summary="Save this browser's push subscription",
             responses={200: {"description": "Already known (by endpoint): updated.", "model": SubscriptionOut},
                        201: {"description": "New subscription."}, 400: _400, 401: _401, 422: _422, 503: _503})
async def subscribe(body: SubscriptionIn, services: ServicesDep, principal: BearerDep, db: DbDep,
                    user_agent: Annotated[str | None, Header()] = None) -> JSONResponse:
    check_endpoint(body.endpoint, services.settings.push_endpoint_prefixes)
    check_keys(body.keys.p256dh, body.keys.auth)
    expires = datetime.fromtimestamp(body.expiration_time / 1000, UTC) if body.expiration_time else None
    async with db.begin():
        row, created = await subscriptions.upsert(
            db, tenant=principal.tenant, user_id=principal.user, endpoint=body.endpoint,
            p256dh=body.keys.p256dh, auth=body.keys.auth, expiration_time=expires,
            user_agent=user_agent[:512] if user_agent else None,
        )
    return JSONResponse(row.to_json(), status_code=201 if created else 200)


@router.get("/subscriptions", response_model=SubscriptionList, responses={401: _401, 503: _503},
            summary="This user's push subscriptions")
async def list_subscriptions(principal: BearerDep, db: DbDep) -> SubscriptionList:
    rows = await subscriptions.for_user(db, principal.tenant, principal.user)
    return SubscriptionList(items=[SubscriptionOut(**row.to_json()) for row in rows])


@router.delete("/subscriptions", status_code=204, summary="Forget a push subscription (e.g. on logout)",
               responses={401: _401, 404: {"description": "No such subscription of this user."}, 503: _503})
async def unsubscribe(principal: BearerDep, db: DbDep,
                      endpoint: Annotated[str, Query(max_length=MAX_ENDPOINT)]) -> Response:
    async with db.begin():
        removed = await subscriptions.remove(db, principal.tenant, principal.user, endpoint)
    if not removed:
        raise NotFound("no such push subscription")
    return Response(status_code=204)
