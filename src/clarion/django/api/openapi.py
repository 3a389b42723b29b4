"""The OpenAPI 3.1 description of the subscriptions API, served at ``api/openapi.json``.

Written by hand next to the views (no framework to derive it from); the tests validate it and
check that it names every route in :mod:`clarion.django.urls`.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse

from clarion.django.api.http import MAX_BODY, ok
from clarion.django.api.serialize import MATCH_OPS
from clarion.django.api.views import MAX_LIMIT


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


_ERRORS = {
    "400": _error("Malformed JSON, a body that is not an object, or a bad query parameter"),
    "401": _error("No API key, or one that is unknown or revoked (`WWW-Authenticate: Bearer`)"),
    "403": _error("A session request without a valid CSRF token"),
    "405": _error("Method not allowed here (see `Allow`)"),
}
_BODY_ERRORS = {
    "413": _error(f"The request body is over {MAX_BODY} bytes"),
    "422": _error("Validation failed: `errors` maps each field to its messages"),
}
_NOT_FOUND = {"404": _error("No such object, or one of another owner (never 403, so ids of "
                            "other owners cannot be probed)")}

# Ids are database primary keys: the URL pattern (<int:id>) takes no sign, so a negative id is
# not one of these paths at all, and SQLite/PostgreSQL keys end at 2**63 - 1.
_ID = {"name": "id", "in": "path", "required": True,
       "schema": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}}
_PAGE = [
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                "maximum": MAX_LIMIT, "default": 50}},
    {"name": "after", "in": "query", "description": "`next_after` of the previous page",
     "schema": {"type": "integer"}},
]


def _op(summary: str, responses: dict[str, Any], *, body: dict[str, Any] | None = None,
        params: list[dict[str, Any]] | None = None, body_required: bool = True,
        op_id: str) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": summary, "operationId": op_id,
                           "responses": {**responses, **_ERRORS}}
    if params:
        out["parameters"] = params
    if body is not None:
        out["requestBody"] = {"required": body_required,
                              "content": {"application/json": {"schema": body}}}
        out["responses"].update(_BODY_ERRORS)
    return out


_NULL_INT = {"type": ["integer", "null"]}
_NULL_NUM = {"type": ["number", "null"]}
_OPTIONS = {
    "description": {"type": "string", "maxLength": 500},
    "rate_limit": {**_NULL_INT, "minimum": 1, "description": "deliveries per second"},
    "fifo": {"type": "boolean", "description": "one delivery at a time, in event order"},
    "retry_schedule": {"type": ["array", "null"], "items": {"type": "number", "minimum": 0},
                       "description": "seconds between attempts; null for the default"},
    "timeout": {**_NULL_NUM, "exclusiveMinimum": 0, "maximum": 300},
    "headers": {"type": "object", "additionalProperties": {"type": "string"},
                "description": "extra request headers (not Content-Type, Host or webhook-*)"},
}
_MATCH = {"type": "object", "additionalProperties": {},
          "description": "field → plain value (equality) or a matcher such as "
                         "`{\"op\": \"startswith\", \"value\": \"J\"}`; ops: "
                         + ", ".join(MATCH_OPS)}


def _page_of(item: str) -> dict[str, Any]:
    return {"type": "object", "required": ["data", "has_more", "next_after"], "properties": {
        "data": {"type": "array", "items": _ref(item)},
        "has_more": {"type": "boolean"},
        "next_after": {**_NULL_INT, "description": "pass as `after` for the next page"},
    }}


SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {
        "error": {"type": "string"},
        "errors": {"type": "object",
                   "additionalProperties": {"type": "array", "items": {"type": "string"}}},
    }},
    "Hook": {"type": "object", "properties": {
        "name": {"type": "string"}, "verbose_name": {"type": "string"},
        "provides_args": {"type": ["array", "null"], "items": {"type": "string"},
                          "description": "the fields events carry and filters may name; "
                                         "null: any"},
    }},
    "SubscriptionInput": {"type": "object", "required": ["hook", "url"],
                          "additionalProperties": False, "properties": {
        "hook": {"type": "string"}, "url": {"type": "string", "format": "uri"},
        "match": _MATCH, **_OPTIONS,
    }},
    "SubscriptionPatch": {"type": "object", "additionalProperties": False, "properties": {
        "hook": {"type": "string", "description": "may be given, but not changed"},
        "url": {"type": "string", "format": "uri"}, "match": _MATCH, **_OPTIONS,
    }},
    "Subscription": {"type": "object", "properties": {
        "id": {"type": "integer"}, "hook": {"type": "string"}, "url": {"type": "string"},
        "match": {"type": "object"}, "owner": _NULL_INT, "active": {"type": "boolean"},
        "disabled_reason": {"type": "string"},
        "disabled_at": {"type": ["string", "null"], "format": "date-time"},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
        "secret": {"type": "string", "description": "only in the answers to create and "
                                                    "rotate-secret"},
        **_OPTIONS,
    }},
    "Delivery": {"type": "object", "properties": {
        "id": {"type": "integer"}, "subscription": {"type": "integer"},
        "event": {"type": "object", "properties": {
            "msg_id": {"type": "string"}, "hook": {"type": "string"},
            "created_at": {"type": "string", "format": "date-time"},
            "payload": {"description": "the body sent (in the single-delivery answer)"}}},
        "status": {"type": "string", "enum": ["pending", "succeeded", "failed", "cancelled"]},
        "attempts": {"type": "integer"}, "last_status_code": _NULL_INT,
        "last_error": {"type": "string"},
        "next_attempt_at": {"type": ["string", "null"], "format": "date-time"},
        "last_attempt_at": {"type": ["string", "null"], "format": "date-time"},
        "ended_at": {"type": ["string", "null"], "format": "date-time"},
        "created_at": {"type": "string", "format": "date-time"},
        "attempt_log": {"type": "array", "items": _ref("Attempt")},
    }},
    "Attempt": {"type": "object", "properties": {
        "number": {"type": "integer"}, "manual": {"type": "boolean"}, "url": {"type": "string"},
        "started_at": {"type": "string", "format": "date-time"},
        "duration_ms": {"type": "integer"}, "outcome": {"type": "string"},
        "status_code": _NULL_INT,
        "response_headers": {"type": "array", "items": {"type": "array",
                                                        "items": {"type": "string"}}},
        "response_body": {"type": "string", "description": "the first 20,000 bytes"},
        "body_base64": {"type": "boolean"}, "error": {"type": "string"},
    }},
    "EventInput": {"type": "object", "required": ["type"], "additionalProperties": False,
                   "properties": {
        "type": {"type": "string", "description": "a registered hook's name"},
        "data": {"type": "object", "description": "the event's fields; only the hook's "
                                                  "provides_args are kept"},
        "owner": {"type": "integer", "description": "staff only: deliver only to this user's "
                                                    "subscriptions"},
    }},
    "Event": {"type": "object", "properties": {
        "id": {"type": "integer"}, "msg_id": {"type": "string"}, "type": {"type": "string"},
        "data": {"type": "object"}, "owner": _NULL_INT,
        "created_at": {"type": "string", "format": "date-time"},
    }},
}


def document(server_url: str = "/") -> dict[str, Any]:
    sub = _json(_ref("Subscription"), "The subscription")
    paths: dict[str, Any] = {
        "/api/hooks": {"get": _op("Event types, their filter fields and the matcher ops", {
            "200": _json({"type": "object", "properties": {
                "data": {"type": "array", "items": _ref("Hook")},
                "match_ops": {"type": "object", "additionalProperties": {"type": "string"}},
            }}, "Event types")}, op_id="listHooks")},
        "/api/subscriptions": {
            "get": _op("Your subscriptions (staff: all)", {
                "200": _json(_page_of("Subscription"), "A page")}, op_id="listSubscriptions",
                params=[*_PAGE, {"name": "hook", "in": "query", "schema": {"type": "string"}},
                        {"name": "active", "in": "query",
                         "schema": {"type": "string", "enum": ["true", "false"]}}]),
            "post": _op("Subscribe a URL to an event type", {
                "201": _json(_ref("Subscription"), "Created; `secret` is shown this once")},
                body=_ref("SubscriptionInput"), op_id="createSubscription"),
        },
        "/api/subscriptions/{id}": {
            "parameters": [_ID],
            "get": _op("One subscription", {"200": sub, **_NOT_FOUND},
                       op_id="getSubscription"),
            "patch": _op("Change a subscription", {"200": sub, **_NOT_FOUND},
                         body=_ref("SubscriptionPatch"), op_id="updateSubscription"),
            "delete": _op("Unsubscribe", {"204": {"description": "Deleted"}, **_NOT_FOUND},
                          op_id="deleteSubscription"),
        },
        "/api/subscriptions/{id}/rotate-secret": {"parameters": [_ID], "post": _op(
            "A new signing secret; the old one keeps signing for the grace period",
            {"200": _json(_ref("Subscription"), "With the new `secret`"), **_NOT_FOUND},
            body={"type": "object", "properties": {"grace_seconds": {
                "type": "number", "minimum": 0, "maximum": 2592000,
                "description": "default ROTATION_GRACE (a day)"}}},
            body_required=False, op_id="rotateSecret")},
        "/api/subscriptions/{id}/enable": {"parameters": [_ID], "post": _op(
            "Enable again (failed deliveries stay failed: recover them)",
            {"200": sub, **_NOT_FOUND}, op_id="enableSubscription")},
        "/api/subscriptions/{id}/disable": {"parameters": [_ID], "post": _op(
            "Disable; pending deliveries fail (recoverable)", {"200": sub, **_NOT_FOUND},
            body={"type": "object", "properties": {"reason": {"type": "string"}}},
            body_required=False, op_id="disableSubscription")},
        "/api/subscriptions/{id}/recover": {"parameters": [_ID], "post": _op(
            "Send again every delivery that failed since a time (at most 14 days back)",
            {"202": _json({"type": "object", "properties": {"recovered": {"type": "integer"}}},
                          "How many deliveries are due again"), **_NOT_FOUND},
            body={"type": "object", "required": ["since"], "properties": {
                "since": {"type": "string", "format": "date-time"}}},
            op_id="recoverSubscription")},
        "/api/subscriptions/{id}/deliveries": {"parameters": [_ID], "get": _op(
            "Deliveries to this subscription, newest first",
            {"200": _json(_page_of("Delivery"), "A page"), **_NOT_FOUND},
            params=[*_PAGE, {"name": "status", "in": "query", "schema": {
                "type": "string", "enum": ["pending", "succeeded", "failed", "cancelled"]}}],
            op_id="listDeliveries")},
        "/api/deliveries/{id}": {"parameters": [_ID], "get": _op(
            "One delivery with its payload and attempts",
            {"200": _json(_ref("Delivery"), "The delivery"), **_NOT_FOUND},
            op_id="getDelivery")},
        "/api/deliveries/{id}/resend": {"parameters": [_ID], "post": _op(
            "One more attempt now", {"202": _json(_ref("Delivery"), "Due now"), **_NOT_FOUND},
            op_id="resendDelivery")},
        "/api/events": {"post": _op(
            "Send an event of a registered type to the matching subscriptions",
            {"202": _json(_ref("Event"), "Stored; workers deliver it"),
             "200": _json(_ref("Event"), "Replayed: this Idempotency-Key was used already")},
            body=_ref("EventInput"), op_id="sendEvent",
            params=[{"name": "Idempotency-Key", "in": "header", "schema": {
                "type": "string", "maxLength": 255}}])},
        "/api/openapi.json": {"get": {"summary": "This document", "operationId": "openapi",
                                      "security": [],
                                      "responses": {"200": {"description": "OpenAPI 3.1"}}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Clarion webhooks API", "version": "1",
                 "description": "REST Hooks: subscribe URLs to event types, watch and replay "
                                "deliveries, send events. Authenticate with "
                                "`Authorization: Bearer ck_…` (API keys are made on the "
                                "dashboard's keys page)."},
        "servers": [{"url": server_url}],
        "security": [{"apiKey": []}],
        "paths": paths,
        "components": {"schemas": SCHEMAS, "securitySchemes": {"apiKey": {
            "type": "http", "scheme": "bearer", "description": "ck_<prefix>_<secret>"}}},
    }


def openapi(request: HttpRequest) -> HttpResponse:
    # The server URL is where the API is mounted: everything before "api/openapi.json".
    base = request.path[: -len("api/openapi.json")] or "/"
    return ok(document(request.build_absolute_uri(base).rstrip("/") or "/"))
