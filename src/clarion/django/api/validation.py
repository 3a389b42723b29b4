"""Checking a subscription's fields; shared by the API and the dashboard forms.

Each check raises :class:`~clarion.django.api.http.ApiError` (422) naming the field, with a
message a person can act on. The URL is checked by the address policy when the listener is
saved (``ListenerBuilder.save``); here only its type.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from clarion.django import match as _match
from clarion.django.api.http import ApiError, invalid
from clarion.django.hooks import Hook, NotRegistered, hooks

OPTION_FIELDS = ("description", "rate_limit", "fifo", "retry_schedule", "timeout", "headers")
MAX_SCHEDULE = 50
MAX_HEADERS = 20
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# The sender writes these itself; a listener's own copy would contradict the signed request.
_RESERVED_HEADERS = ("content-type", "content-length", "host", "transfer-encoding",
                     "connection", "webhook-")


def get_hook(name: Any) -> Hook:
    if not isinstance(name, str) or not name:
        raise invalid("hook", "name a registered event type (GET api/hooks lists them)")
    try:
        return hooks.get_hook(name)
    except NotRegistered:
        raise invalid("hook", f"no event type {name!r} is registered; GET api/hooks "
                              "lists them") from None


def to_matcher(value: Any) -> _match.Matcher:
    """A matcher's JSON (an object with ``op``), nested field conditions (any other object),
    or a plain value meaning equality."""
    if isinstance(value, Mapping):
        if "op" in value:
            return _match.from_json(value)
        return _match.Fields({str(k): to_matcher(v) for k, v in value.items()})
    return _match.Is(value)


def parse_match(hook: Hook, value: Any) -> dict[str, _match.Matcher]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise invalid("match", "an object of field name → value or matcher")
    allowed = hook.filter_fields()
    errors: list[str] = []
    conditions: dict[str, _match.Matcher] = {}
    for name, spec in value.items():
        if allowed is not None and name not in allowed:
            errors.append(f"{name}: event type {hook.name!r} provides no such field; "
                          f"it provides {sorted(allowed)}")
            continue
        try:
            conditions[name] = to_matcher(spec)
        except (ValueError, TypeError) as exc:
            errors.append(f"{name}: {exc}")
    if errors:
        raise ApiError(422, "validation failed", {"match": errors})
    return conditions


def _number(field: str, value: Any, *, integer: bool = False, positive: bool = False) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or (
            integer and not isinstance(value, int)):
        raise invalid(field, f"must be {'an integer' if integer else 'a number'} or null")
    if value < 0 or (positive and value == 0):
        raise invalid(field, f"must be {'positive' if positive else 'zero or more'}")
    return value


def clean_options(data: Mapping[str, Any]) -> dict[str, Any]:
    """The listener options present in ``data``, checked; absent ones are left out."""
    out: dict[str, Any] = {}
    errors: dict[str, list[str]] = {}
    for field in OPTION_FIELDS:
        if field not in data:
            continue
        try:
            out[field] = _clean_option(field, data[field])
        except ApiError as exc:
            for key, messages in exc.errors.items():
                errors.setdefault(key, []).extend(messages)
    if errors:
        raise ApiError(422, "validation failed", errors)
    return out


def _clean_option(field: str, value: Any) -> Any:
    if field == "description":
        if value is None:
            return ""
        if not isinstance(value, str) or len(value) > 500:
            raise invalid(field, "must be text of at most 500 characters")
        return value
    if field == "rate_limit":
        return _number(field, value, integer=True, positive=True)
    if field == "fifo":
        if not isinstance(value, bool):
            raise invalid(field, "must be true or false")
        return value
    if field == "timeout":
        timeout = _number(field, value, positive=True)
        if timeout is not None and timeout > 300:
            raise invalid(field, "must be at most 300 seconds")
        return timeout
    if field == "retry_schedule":
        if value is None:
            return None
        if (not isinstance(value, list) or len(value) > MAX_SCHEDULE
                or any(isinstance(v, bool) or not isinstance(v, int | float) or v < 0
                       for v in value)):
            raise invalid(field, f"must be null or a list of at most {MAX_SCHEDULE} "
                                 "non-negative numbers of seconds")
        return value
    return clean_headers(value)


def clean_headers(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or len(value) > MAX_HEADERS:
        raise invalid("headers", f"must be an object of at most {MAX_HEADERS} name → value")
    for name, text in value.items():
        if not _TOKEN.match(name):
            raise invalid("headers", f"{name!r} is not a valid header name")
        if name.lower().startswith(_RESERVED_HEADERS):
            raise invalid("headers", f"{name!r} is set by Clarion itself")
        if not isinstance(text, str) or any(c in text for c in "\r\n\0") or len(text) > 4096:
            raise invalid("headers", f"{name!r}: the value must be one line of text")
    return dict(value)


def parse_since(value: Any) -> datetime:
    if not isinstance(value, str):
        raise invalid("since", "an ISO-8601 date-time, e.g. 2024-05-01T12:00:00Z")
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise invalid("since", f"{value!r} is not an ISO-8601 date-time") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)
