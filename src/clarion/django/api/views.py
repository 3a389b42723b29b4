"""The subscriptions API's views (REST Hooks: subscribers create and delete hook resources).

Owner scoping: a caller sees only their own subscriptions and the deliveries to them, staff see
all. Another owner's object answers **404**, exactly as a missing one does, so ids of other
owners' objects cannot be probed. The routes are in :mod:`clarion.django.urls`; the contract
is in :mod:`clarion.django.api.openapi`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.http import HttpRequest, HttpResponse
from django.urls import reverse

from clarion.django import match as _match
from clarion.django.api import serialize
from clarion.django.api.http import ApiError, Caller, database, invalid, no_content, ok, read_json
from clarion.django.api.validation import (
    OPTION_FIELDS,
    clean_options,
    get_hook,
    parse_match,
    parse_since,
)
from clarion.django.conf import webhook_settings
from clarion.django.hooks import Hook, NotRegistered, hooks
from clarion.django.models import Attempt, Delivery, Event, Listener
from clarion.errors import AddressRejected, PayloadTooLarge

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
CREATE_FIELDS = frozenset({"hook", "url", "match", *OPTION_FIELDS})
PATCH_FIELDS = frozenset({"url", "match", *OPTION_FIELDS})
# Hook.send(sender, *, using, **fields) takes these itself; an event field of that name would
# be taken for the argument.
_SEND_ARGS = frozenset({"sender", "using"})


# -- helpers ----------------------------------------------------------------------------------

def page(request: HttpRequest, queryset: Any, render: Callable[[Any], Any]) -> dict[str, Any]:
    """Newest first; ``?limit=`` (1-200, default 50) and ``?after=<id>`` continue from the
    last item of the previous page (a cursor stays stable while new rows arrive)."""
    limit = _int_param(request, "limit", DEFAULT_LIMIT)
    if not 1 <= limit <= MAX_LIMIT:
        raise ApiError(400, f"limit must be between 1 and {MAX_LIMIT}")
    after = request.GET.get("after")
    if after:
        queryset = queryset.filter(pk__lt=_int_param(request, "after", 0))
    rows = list(queryset.order_by("-pk")[:limit + 1])
    more = len(rows) > limit
    rows = rows[:limit]
    return {"data": [render(r) for r in rows], "has_more": more,
            "next_after": rows[-1].pk if more else None}


def _int_param(request: HttpRequest, name: str, default: int) -> int:
    raw = request.GET.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer, not {raw!r}") from None


def _unknown(data: dict[str, Any], known: frozenset[str]) -> None:
    extra = sorted(set(data) - known)
    if extra:
        raise ApiError(422, "validation failed",
                       {name: [f"unknown field; known: {sorted(known)}"] for name in extra})


def _listener(caller: Caller, pk: int) -> Any:
    row = caller.listeners(Listener.objects.using(database())).filter(pk=pk).first()
    if row is None:
        raise ApiError(404, f"no subscription {pk}")
    return row


def _delivery(caller: Caller, pk: int) -> Any:
    row = caller.deliveries(Delivery.objects.using(database()).select_related("event")).filter(
        pk=pk).first()
    if row is None:
        raise ApiError(404, f"no delivery {pk}")
    return row


def _hook_of(row: Any) -> Hook:
    try:
        return hooks.get_hook(row.hook)
    except NotRegistered:  # unregistered since: its fields are no longer known
        return Hook(name=row.hook)


def _validation(exc: ValidationError) -> ApiError:
    errors = exc.message_dict if hasattr(exc, "error_dict") else {"__all__": exc.messages}
    return ApiError(422, "validation failed", errors)


def _check_url(url: Any) -> str:
    if not isinstance(url, str) or not url:
        raise invalid("url", "an http(s) URL is required")
    if len(url) > 2048:
        raise invalid("url", "must be at most 2048 characters")
    try:
        webhook_settings().policy().parse_url(url)
    except AddressRejected as exc:
        raise invalid("url", str(exc)) from None
    return url


# -- event types ------------------------------------------------------------------------------

def list_hooks(request: HttpRequest, caller: Caller) -> HttpResponse:
    return ok({"data": [serialize.hook(h) for h in hooks], "match_ops": serialize.match_ops()})


# -- subscriptions ----------------------------------------------------------------------------

def list_subscriptions(request: HttpRequest, caller: Caller) -> HttpResponse:
    rows = caller.listeners(Listener.objects.using(database()))
    if request.GET.get("hook"):
        rows = rows.filter(hook=request.GET["hook"])
    active = request.GET.get("active")
    if active is not None:
        if active not in ("true", "false"):
            raise ApiError(400, "active must be true or false")
        rows = rows.filter(active=active == "true")
    return ok(page(request, rows, serialize.listener))


def create_subscription(request: HttpRequest, caller: Caller) -> HttpResponse:
    data = read_json(request)
    _unknown(data, CREATE_FIELDS)
    hook = get_hook(data.get("hook"))
    url = _check_url(data.get("url"))
    conditions = parse_match(hook, data.get("match"))
    options = clean_options(data)
    try:
        row = hook.listener(url=url).match(**conditions).save(owner_id=caller.user.pk, **options)
    except ValidationError as exc:
        raise _validation(exc) from None
    response = ok(serialize.listener(row, secret=row.secret), status=201)
    response["Location"] = request.build_absolute_uri(
        reverse("clarion:api-subscription", args=[row.pk]))
    return response


def get_subscription(request: HttpRequest, caller: Caller, pk: int) -> HttpResponse:
    return ok(serialize.listener(_listener(caller, pk)))


def update_subscription(request: HttpRequest, caller: Caller, pk: int) -> HttpResponse:
    row = _listener(caller, pk)
    data = read_json(request)
    if "hook" in data:
        if data["hook"] != row.hook:
            raise invalid("hook", "the event type cannot change; create a new subscription")
        del data["hook"]
    _unknown(data, PATCH_FIELDS)
    if "url" in data:
        row.url = _check_url(data["url"])
    if "match" in data:
        row.match = _match.filter_to_json(parse_match(_hook_of(row), data["match"]))
    for name, value in clean_options(data).items():
        setattr(row, name, value)
    try:
        row.full_clean(exclude=["url", "secret"])
    except ValidationError as exc:
        raise _validation(exc) from None
    row.save(using=database())
    return ok(serialize.listener(row))


def delete_subscription(request: HttpRequest, caller: Caller, pk: int) -> HttpResponse:
    _listener(caller, pk).delete()
    return no_content()


def rotate_secret(request: HttpRequest, caller: Caller, pk: int) -> HttpResponse:
    row = _listener(caller, pk)
    grace = read_json(request, required=False).get("grace_seconds")
    if grace is not None and (isinstance(grace, bool) or not isinstance(grace, int | float)
                              or not 0 <= grace <= 30 * 86400):
        raise invalid("grace_seconds", "must be a number of seconds between 0 and 30 days")
    secret = row.rotate_secret(grace=grace)
    return ok({**serialize.listener(row), "secret": secret})


def enable(request: HttpRequest, caller: Caller, pk: int) -> HttpResponse:
    row = _listener(caller, pk)
    row.enable()
    return ok(serialize.listener(row))


def disable(request: HttpRequest, caller: Caller, pk: int) -> HttpResponse:
    row = _listener(caller, pk)
    reason = read_json(request, required=False).get("reason") or "disabled through the API"
    if not isinstance(reason, str) or len(reason) > 200:
        raise invalid("reason", "must be text of at most 200 characters")
    row.disable(reason)
    row.refresh_from_db()
    return ok(serialize.listener(row))


def recover(request: HttpRequest, caller: Caller, pk: int) -> HttpResponse:
    row = _listener(caller, pk)
    since = parse_since(read_json(request).get("since"))
    try:
        count = row.recover(since)
    except ValueError as exc:
        raise invalid("since", str(exc)) from None
    return ok({"recovered": count}, status=202)


# -- deliveries -------------------------------------------------------------------------------

def list_deliveries(request: HttpRequest, caller: Caller, pk: int) -> HttpResponse:
    row = _listener(caller, pk)
    rows = Delivery.objects.using(database()).filter(listener=row).select_related("event")
    status = request.GET.get("status")
    if status:
        if status not in Delivery.Status.values:
            raise ApiError(400, f"status must be one of {', '.join(Delivery.Status.values)}")
        rows = rows.filter(status=status)
    return ok(page(request, rows, serialize.delivery))


def get_delivery(request: HttpRequest, caller: Caller, pk: int) -> HttpResponse:
    row = _delivery(caller, pk)
    attempts = list(Attempt.objects.using(database()).filter(delivery=row).order_by("number",
                                                                                    "id"))
    return ok(serialize.delivery(row, attempts=attempts))


def resend(request: HttpRequest, caller: Caller, pk: int) -> HttpResponse:
    row = _delivery(caller, pk)
    row.resend()
    return ok(serialize.delivery(row), status=202)


# -- sending events ---------------------------------------------------------------------------

def send_event(request: HttpRequest, caller: Caller) -> HttpResponse:
    """Staff send to every listener (or to one owner's with ``"owner": <user id>``); anyone
    else's events reach only their own listeners."""
    data = read_json(request)
    _unknown(data, frozenset({"type", "data", "owner"}))
    try:
        hook = hooks.get_hook(data.get("type"))  # type: ignore[arg-type]
    except (NotRegistered, TypeError):
        raise invalid("type", f"no event type {data.get('type')!r} is registered; GET api/hooks "
                              "lists them") from None
    fields = data.get("data", {})
    if not isinstance(fields, dict):
        raise invalid("data", "must be an object of the event's fields")
    clash = sorted(_SEND_ARGS & set(fields))
    if clash:
        raise invalid("data", f"field names {clash} are reserved")
    owner = data.get("owner")
    if owner is not None and (not caller.sees_all or isinstance(owner, bool)
                              or not isinstance(owner, int)):
        raise invalid("owner", "only staff may name an owner, as a user id")
    if not caller.sees_all:
        owner = caller.user.pk
    key = request.headers.get("Idempotency-Key")
    msg_id = _idempotent_id(caller, key) if key is not None else None
    db = database()
    if msg_id is not None:
        earlier = Event.objects.using(db).filter(msg_id=msg_id).first()
        if earlier is not None:
            return _event_response(earlier, replayed=True)
    try:
        with transaction.atomic(using=db):
            event = hook.send(None, using=db, **fields)
            # Set in the same transaction: the worker only sees the event once it commits.
            updates: dict[str, Any] = {}
            if owner is not None:
                updates["owner_id"] = owner
            if msg_id is not None:
                updates["msg_id"] = msg_id
            if updates:
                Event.objects.using(db).filter(pk=event.pk).update(**updates)
                event.refresh_from_db(using=db)
    except PayloadTooLarge as exc:
        raise ApiError(413, str(exc)) from None
    except IntegrityError:
        earlier = Event.objects.using(db).filter(msg_id=msg_id).first() if msg_id else None
        if earlier is None:
            raise
        return _event_response(earlier, replayed=True)  # a concurrent request with the key
    return _event_response(event, replayed=False)


def _idempotent_id(caller: Caller, key: str) -> str:
    """The event's id for an ``Idempotency-Key``: per caller, so keys of different users never
    collide; the event row itself remembers the key for as long as it is kept."""
    if not key or len(key) > 255 or not key.isprintable():
        raise invalid("Idempotency-Key", "must be 1-255 printable characters")
    digest = hashlib.sha256(f"{caller.user.pk}\0{key}".encode()).hexdigest()[:40]
    return f"msg_idem_{digest}"


def _event_response(event: Any, *, replayed: bool) -> HttpResponse:
    response = ok({"id": event.pk, "msg_id": event.msg_id, "type": event.hook,
                   "data": event.data, "owner": event.owner_id,
                   "created_at": serialize.when(event.created_at)},
                  status=200 if replayed else 202)
    if replayed:
        response["Idempotent-Replayed"] = "true"
    return response
