"""Rows to the JSON the API answers with. Secrets appear only where a caller asks for them
(create and rotate), never in a listing."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from clarion.django import match as _match
from clarion.django.hooks import Hook


def when(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def hook(h: Hook) -> dict[str, Any]:
    fields = h.filter_fields()
    return {
        "name": h.name,
        "verbose_name": h.verbose_name or h.name,
        "provides_args": None if fields is None else sorted(fields),
    }


MATCH_OPS: dict[str, str] = {
    "any": "anything, even an absent field: {\"op\": \"any\"}",
    "is": "JSON equality: {\"op\": \"is\", \"value\": 42} (a plain value means the same)",
    "startswith": "text starts with: {\"op\": \"startswith\", \"value\": \"J\"}",
    "endswith": "text ends with: {\"op\": \"endswith\", \"value\": \"son\"}",
    "contains": "substring of text, or element of a list: {\"op\": \"contains\", \"value\": \"x\"}",
    "like": "regular expression searched in text: {\"op\": \"like\", \"value\": \"^J.*n$\"}",
    "in": "one of: {\"op\": \"in\", \"values\": [1, 2]}",
    "gt": "greater than (numbers or text): {\"op\": \"gt\", \"value\": 10}",
    "gte": "greater or equal: {\"op\": \"gte\", \"value\": 10}",
    "lt": "less than: {\"op\": \"lt\", \"value\": 10}",
    "lte": "less or equal: {\"op\": \"lte\", \"value\": 10}",
    "exists": "present (value true) or absent (false): {\"op\": \"exists\", \"value\": true}",
    "and": "all of: {\"op\": \"and\", \"args\": [matcher, …]}",
    "or": "any of: {\"op\": \"or\", \"args\": [matcher, …]}",
    "not": "negation: {\"op\": \"not\", \"arg\": matcher}",
    "fields": "conditions on a nested object: {\"op\": \"fields\", \"match\": {field: matcher}}",
}


def match_ops() -> dict[str, str]:
    """Every op :func:`clarion.django.match.from_json` knows, with how to write it."""
    known = getattr(_match, "_OPS", {})
    return {op: MATCH_OPS.get(op) or (cls.__doc__ or op).strip() for op, cls in known.items()}


def listener(row: Any, *, secret: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": row.pk,
        "hook": row.hook,
        "url": row.url,
        "match": row.match,
        "description": row.description,
        "owner": row.owner_id,
        "active": row.active,
        "disabled_reason": row.disabled_reason,
        "disabled_at": when(row.disabled_at),
        "rate_limit": row.rate_limit,
        "fifo": row.fifo,
        "retry_schedule": row.retry_schedule,
        "timeout": row.timeout,
        "headers": row.headers,
        "created_at": when(row.created_at),
        "updated_at": when(row.updated_at),
    }
    if secret is not None:
        out["secret"] = secret
    return out


def delivery(row: Any, *, attempts: list[Any] | None = None) -> dict[str, Any]:
    event = row.event
    out: dict[str, Any] = {
        "id": row.pk,
        "subscription": row.listener_id,
        "event": {"msg_id": event.msg_id, "hook": event.hook,
                  "created_at": when(event.created_at)},
        "status": row.status,
        "attempts": row.attempts,
        "next_attempt_at": when(row.next_attempt_at),
        "last_status_code": row.last_status_code,
        "last_error": row.last_error,
        "created_at": when(row.created_at),
        "last_attempt_at": when(row.last_attempt_at),
        "ended_at": when(row.ended_at),
    }
    if attempts is not None:
        out["event"]["payload"] = json.loads(event.payload)
        out["attempt_log"] = [attempt(a) for a in attempts]
    return out


def attempt(row: Any) -> dict[str, Any]:
    return {
        "number": row.number,
        "manual": row.manual,
        "url": row.url,
        "started_at": when(row.started_at),
        "duration_ms": row.duration_ms,
        "outcome": row.outcome,
        "status_code": row.status_code,
        "response_headers": row.response_headers,
        "response_body": row.response_body,
        "body_base64": row.body_base64,
        "error": row.error,
    }
