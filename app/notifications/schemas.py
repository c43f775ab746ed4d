"""The notification API's request and response bodies (the contract's field names)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictBool, StringConstraints, field_validator
from pydantic.json_schema import JsonDict

from app import rules
from app.rules import TENANT_PATTERN, TYPE_PATTERN, USER_PATTERN

Status = Literal["unread", "unseen", "all", "archived", "snoozed"]
# Where a notification goes out: a medium, called "channel" on the wire (the `channels` field
# below, the preferences' keys) and in the database; in code "channel" is a pub/sub channel.
Medium = Literal["in_app", "web_push"]
MEDIA: tuple[Medium, ...] = ("in_app", "web_push")
# the wire rules a publisher checks too (forge_publisher.rules, through app.rules), as strings
DEFAULT_CATEGORY = rules.DEFAULT_CATEGORY
CATEGORY_PATTERN = rules.CATEGORY_PATTERN.pattern
Category = Annotated[str, StringConstraints(pattern=CATEGORY_PATTERN)]
TAG_PATTERN = rules.TAG_PATTERN.pattern
Tag = Annotated[str, StringConstraints(pattern=TAG_PATTERN)]
ACTION_ID_PATTERN = rules.ACTION_ID_PATTERN.pattern
URL_PATTERN = rules.URL_PATTERN.pattern
MAX_IDS = 100
SNOOZE_MAX_DAYS = 90
BulkAction = Literal["read", "unread", "archive", "unarchive", "delete"]

_NOTIFICATION_EXAMPLE: JsonDict = {
    "id": "0b7c5f0e-7a51-4c4b-9d0e-2f8f3c1e9a10", "tenant": "org_123", "user_id": "u1", "type": "pr.created",
    "category": "pull_requests", "title": "New pull request", "message": "Ada opened #42: Faster resume",
    "action_url": "https://forge.example/org_123/repo_456/pulls/42", "data": {"pr": 42},
    "idempotency_key": "pr-42-created", "created_at": "2026-11-28T06:00:00.000Z",
    "seen_at": None, "read_at": None, "archived_at": None,
    "actions": [{"id": "review", "label": "Review", "url": "https://forge.example/org_123/repo_456/pulls/42"},
                {"id": "later", "label": "Later"}],
    "tags": ["repo:repo_456", "pr"], "action_taken": None, "acted_at": None, "snoozed_until": None,
}


class Action(BaseModel):
    """A button on a notification (the first is the primary one); the one a user takes is recorded."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=ACTION_ID_PATTERN)
    label: str = Field(min_length=1, max_length=rules.ACTION_LABEL_MAX)
    url: str | None = Field(None, max_length=rules.URL_MAX, pattern=URL_PATTERN)


class NotificationIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        key: _NOTIFICATION_EXAMPLE[key]
        for key in ("tenant", "user_id", "type", "title", "message", "action_url", "data", "category", "idempotency_key",
                    "actions", "tags")}]})

    tenant: str = Field(pattern=TENANT_PATTERN.pattern)
    user_id: str = Field(pattern=USER_PATTERN.pattern)
    type: str = Field(pattern=TYPE_PATTERN.pattern, description="e.g. `mention`, `pr.created`.")
    title: str = Field(min_length=1, max_length=rules.TITLE_MAX)
    message: str = Field(max_length=rules.MESSAGE_MAX)
    action_url: str | None = Field(None, max_length=rules.URL_MAX, pattern=URL_PATTERN,
                                   description="Where a click leads: an http(s) URL or a path of the app.")
    data: dict[str, Any] = Field(default_factory=dict, description="Free JSON for the client.")
    category: str = Field(DEFAULT_CATEGORY, pattern=CATEGORY_PATTERN,
                          description="What preferences switch on and off; default `general`.")
    idempotency_key: str | None = Field(None, min_length=1, max_length=rules.IDEMPOTENCY_KEY_MAX,
                                        description="Per tenant: a repeat returns the first notification (200).")
    actions: list[Action] = Field(default_factory=list, max_length=rules.ACTIONS_MAX,
                                  description="At most two buttons (primary first), ids unique.")
    tags: list[Tag] = Field(default_factory=list, max_length=rules.TAGS_MAX,
                            description="Filters for `GET /v1/notifications?tag=`; repeats are dropped.")

    @field_validator("actions")
    @classmethod
    def _unique_action_ids(cls, actions: list[Action]) -> list[Action]:
        if len({action.id for action in actions}) != len(actions):
            raise ValueError("action ids must be unique")
        return actions

    @field_validator("tags")
    @classmethod
    def _unique_tags(cls, tags: list[str]) -> list[str]:
        return list(dict.fromkeys(tags))


class NotificationOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_NOTIFICATION_EXAMPLE]})

    id: str
    tenant: str
    user_id: str
    type: str
    category: str
    title: str
    message: str
    action_url: str | None
    data: dict[str, Any]
    idempotency_key: str | None
    created_at: str
    seen_at: str | None
    read_at: str | None
    archived_at: str | None
    actions: list[Action]
    tags: list[str]
    action_taken: str | None = Field(description="The id of the action the user took, once.")
    acted_at: str | None
    snoozed_until: str | None = Field(description="Hidden until then (listed only under `status=snoozed`).")


class Counts(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"unread": 3, "unseen": 1, "total": 12}]})
    unread: int
    unseen: int
    total: int = Field(description="Every notification not archived.")


class Page(BaseModel):
    items: list[NotificationOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class UnreadCount(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"count": 3}]})
    count: int


class Bulk(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"updated": 3, "unread_count": 0, "unseen_count": 0}]})
    updated: int = Field(description="Notifications this call changed.")
    unread_count: int
    unseen_count: int


class Changed(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"changed": 2, "counts": {"unread": 1, "unseen": 0, "total": 9}}]})
    changed: int = Field(description="Notifications this call changed (ids not the caller's are skipped).")
    counts: Counts = Field(description="The caller's counts after the change.")


class ArchiveAllIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"status": "read"}]})
    status: Literal["read"] | None = Field(None, description="`read`: archive only those already read.")


class BulkIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"ids": [
        "0b7c5f0e-7a51-4c4b-9d0e-2f8f3c1e9a10"], "action": "archive"}]})
    ids: list[Annotated[str, StringConstraints(min_length=1, max_length=64)]] = Field(min_length=1, max_length=MAX_IDS)
    action: BulkAction


class SnoozeIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"until": "2026-12-04T09:00:00Z"}]})
    until: AwareDatetime = Field(description=f"When it comes back, unread: in the future, at most {SNOOZE_MAX_DAYS} "
                                             "days ahead, with a time zone.")


class PreferencesIn(BaseModel):
    """The whole set of switches (PUT replaces it): per category, channel -> on/off. A category or
    channel not listed is on. Read-only fields of the GET answer may be sent back; they are ignored."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"categories": {"mentions": {"web_push": False}}}]})

    categories: dict[Category, dict[Medium, StrictBool]] = Field(
        default_factory=dict, max_length=200, json_schema_extra={"additionalProperties": False})


class Preferences(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "categories": {"mentions": {"web_push": False}},
        "channels": ["in_app", "web_push"], "critical_categories": ["security"]}]})

    categories: dict[str, dict[Medium, bool]]
    channels: list[Medium] = Field(default=list(MEDIA), description="Read-only: the channels there are.")
    critical_categories: list[str] = Field(default_factory=list, description="Read-only: categories that cannot be turned off.")
