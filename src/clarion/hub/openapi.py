"""The OpenAPI 3.1 document of the server API, generated from the request models."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

import msgspec

from clarion import __version__
from clarion.hub.static import read

if TYPE_CHECKING:
    from clarion.hub.api import ServerApi

_DESCRIPTIONS = {
    "publish": "Publish data into a channel. Returns the publication's stream position when "
               "the channel keeps history.",
    "broadcast": "Publish the same data into many channels.",
    "subscribe": "Subscribe a user's connections to a channel (server-side subscription).",
    "unsubscribe": "Unsubscribe a user's connections from a channel.",
    "disconnect": "Disconnect a user's connections.",
    "refresh": "Set or expire a user's connection lifetime.",
    "presence": "Clients present in a channel.",
    "presence_stats": "Number of clients and distinct users present in a channel.",
    "history": "Publications kept in a channel's history stream.",
    "history_remove": "Remove a channel's history (its epoch and offset are kept).",
    "channels": "Channels with subscribers on any node, optionally filtered by a glob pattern.",
    "info": "Statistics of every node (the answering node first).",
    "ticket": "Issue a one-time connection ticket for a user (Clarion). Valid once, "
              "for `ttl` seconds (default 10).",
    "event": "One event to every audience (Clarion; needs `serve --webhooks-db`): written to "
             "the webhook outbox for the listeners of `type` and, with a `channel` (or the "
             "hook's own), its body is published there with the event's id as idempotency "
             "key. Answers `{\"id\", \"deliveries\", \"publication\": {\"offset\", "
             "\"epoch\"} | null}`; `publication` is null when the broker was away (the "
             "worker publishes it later). A repeated `idempotency_key` answers the first "
             "event. Without the webhook store: error 108.",
    "batch": "Run several commands in one request; replies come in the same order.",
}


def _error_schema() -> dict[str, Any]:
    return {"type": "object", "properties": {"error": {
        "type": "object",
        "properties": {"code": {"type": "integer"}, "message": {"type": "string"},
                       "fields": {"type": "array", "items": {"type": "object", "properties": {
                           "field": {"type": "string"}, "problem": {"type": "string"}}}}},
        "required": ["code", "message"]}}}


def _raw_schema(kind: type) -> dict[str, Any]:
    if kind is msgspec.Raw:
        return {"description": "any JSON value, passed through as it is"}
    raise NotImplementedError  # msgspec's signal for "not mine"


@cache
def _document(methods: tuple[tuple[str, type], ...]) -> bytes:
    from clarion.hub.api import BatchReq

    types = [kind for _, kind in methods] + [BatchReq]
    schemas, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}",
        schema_hook=_raw_schema)
    paths: dict[str, Any] = {}
    for (name, _), schema in zip([*methods, ("batch", BatchReq)], schemas, strict=True):
        paths[f"/api/{name}"] = {"post": {
            "operationId": name,
            "summary": _DESCRIPTIONS.get(name, name),
            "tags": ["server API"],
            "security": [{"apiKey": []}, {"apiKeyAuthorization": []}],
            "requestBody": {"required": True,
                            "content": {"application/json": {"schema": schema}}},
            "responses": {
                "200": {"description": "`{\"result\": …}` or, when the call failed, "
                                       "`{\"error\": {\"code\", \"message\"}}`",
                        "content": {"application/json": {"schema": {"type": "object"}}}},
                "400": {"description": "Body is not JSON",
                        "content": {"application/json": {"schema": _error_schema()}}},
                "401": {"description": "Missing or wrong API key"},
                "413": {"description": "Body larger than api_max_body_size"},
                "422": {"description": "Body does not match the schema; names the field",
                        "content": {"application/json": {"schema": _error_schema()}}},
            },
        }}
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "Clarion server API", "version": __version__,
                 "description": "Centrifugo-compatible server API of the Clarion hub."},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "apiKeyAuthorization": {"type": "apiKey", "in": "header",
                                        "name": "Authorization",
                                        "description": "`apikey <key>`"},
            },
        },
    }
    return msgspec.json.encode(doc)


def openapi_document(api: ServerApi) -> bytes:
    return _document(tuple((name, kind) for name, (kind, _) in api.methods.items()))


def docs_page() -> bytes:
    return read("docs.html") or b"<!doctype html><p>docs page missing from the package</p>"
