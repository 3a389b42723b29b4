"""Checking a subscription's fields; shared by the API and the dashboard forms.

Each check raises :class:`~clarion.django.api.http.ApiError` (422) naming the field, with a
message a person can act on. The URL is checked by the address policy when the listener is
saved (``ListenerBuilder.save``); here only its type.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from clarion.django import match as _match
from clarion.django.api.http import ApiError, invalid
from clarion.django.hooks import Hook, NotRegistered, hooks
from clarion.errors import LimitError
from clarion.webhooks import limits

OPTION_FIELDS = ("description", "rate_limit", "fifo", "retry_schedule", "timeout", "headers")


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
    try:
        limits.check_filter_json(value)
    except LimitError as exc:
        raise invalid("match", f"the filter {exc}") from None
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
        if not isinstance(value, str) or len(value) > limits.MAX_DESCRIPTION:
            raise invalid(field, f"must be text of at most {limits.MAX_DESCRIPTION} characters")
        return value
    if field == "fifo":
        if not isinstance(value, bool):
            raise invalid(field, "must be true or false")
        return value
    check = {"rate_limit": limits.check_rate_limit, "timeout": limits.check_timeout,
             "retry_schedule": limits.check_schedule, "headers": limits.check_headers}[field]
    try:
        return check(value)
    except LimitError as exc:
        raise invalid(field, str(exc)) from None


def clean_headers(value: Any) -> dict[str, str]:
    try:
        return limits.check_headers(value)
    except LimitError as exc:
        raise invalid("headers", str(exc)) from None


def parse_since(value: Any) -> datetime:
    if not isinstance(value, str):
        raise invalid("since", "an ISO-8601 date-time, e.g. 2024-05-01T12:00:00Z")
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise invalid("since", f"{value!r} is not an ISO-8601 date-time") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)
