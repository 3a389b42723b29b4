"""The proxy requests the hub sends, as Centrifugo's HTTP proxy shapes them, and the answers.

Decoding is lenient about what the views do not use (unknown fields are ignored: Centrifugo
adds fields over time and a hub may be newer than this app) and strict about what they do use
(a wrong type or a missing ``channel`` is a 400 naming the field). Payloads arrive as JSON in
``data`` or, in the hub's binary mode, base64 in ``b64data``; a handler sees the decoded JSON
value or the bytes.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import msgspec

__all__ = ["BadRequest", "ConnectRequest", "PublishRequest", "RPCRequest", "RefreshRequest",
           "SubRefreshRequest", "SubscribeRequest", "decode", "disconnect", "error", "payload"]


class BadRequest(ValueError):
    """The request is not a proxy request of the expected shape (the view answers 400)."""


class _Common(msgspec.Struct, kw_only=True):
    client: str = ""
    transport: str = ""
    protocol: str = ""
    encoding: str = ""
    meta: Any = None


class ConnectRequest(_Common, kw_only=True):
    name: str = ""
    version: str = ""
    data: Any = None
    b64data: str | None = None
    channels: list[str] = msgspec.field(default_factory=list)


class RefreshRequest(_Common, kw_only=True):
    user: str = ""  # protobuf's JSON leaves out an empty string: an anonymous connection


class SubscribeRequest(_Common, kw_only=True):
    user: str = ""
    channel: str
    token: str = ""
    data: Any = None
    b64data: str | None = None


class PublishRequest(_Common, kw_only=True):
    user: str = ""
    channel: str
    data: Any = None
    b64data: str | None = None


class SubRefreshRequest(_Common, kw_only=True):
    user: str = ""
    channel: str


class RPCRequest(_Common, kw_only=True):
    user: str = ""
    method: str = ""
    data: Any = None
    b64data: str | None = None


def decode(body: bytes, kind: type[_Common]) -> Any:
    """``body`` as ``kind``; BadRequest saying what is wrong and where."""
    if not body.strip():
        raise BadRequest("the request has no body; expected a JSON object")
    try:
        request = msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"not a {kind.__name__[:-7].lower()} proxy request: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from None
    if isinstance(request, SubscribeRequest | PublishRequest | SubRefreshRequest) and (
            not request.channel):
        raise BadRequest("`channel` must not be empty")
    return request


def payload(request: Any) -> Any:
    """The request's ``data`` (a JSON value), or its ``b64data`` as bytes."""
    if request.b64data is not None:
        try:
            return base64.b64decode(request.b64data, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("`b64data` is not base64") from None
    return request.data


def error(code: int, message: str, temporary: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if temporary:
        body["temporary"] = True
    return {"error": body}


def disconnect(code: int, reason: str) -> dict[str, Any]:
    return {"disconnect": {"code": code, "reason": reason}}
