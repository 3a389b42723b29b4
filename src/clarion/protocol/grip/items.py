"""Publish items: what ``POST /publish/`` carries, in both shapes Pushpin accepts.

``{"items": [item, ...]}`` where an item is ``{"channel", "id"?, "prev-id"?, "meta"?,
"no-seq"?, "formats": {...}}`` or, as pubcontrol sends it over HTTP, with the formats
(``http-response``, ``http-stream``, ``ws-message``) at the item's top level.
Every format takes ``action``: send (default), hint, close or refresh, and ``content-filters``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any, Literal

import msgspec

from clarion.errors import GripError

Action = Literal["send", "hint", "close", "refresh"]


class _Format(msgspec.Struct, forbid_unknown_fields=False, omit_defaults=True):
    action: Action = "send"
    content_filters: list[str] = msgspec.field(name="content-filters", default_factory=list)


class HttpResponseFormat(_Format):
    code: int = 200
    reason: str | None = None
    headers: list[tuple[str, str]] | dict[str, str] | None = None
    body: str | None = None
    body_bin: str | None = msgspec.field(name="body-bin", default=None)
    body_patch: list[Any] | None = msgspec.field(name="body-patch", default=None)

    def header_pairs(self) -> list[tuple[str, str]]:
        h = self.headers
        if h is None:
            return []
        return list(h.items()) if isinstance(h, dict) else [(k, v) for k, v in h]

    @property
    def body_bytes(self) -> bytes:
        return _bytes(self.body, self.body_bin, "http-response body-bin")


class HttpStreamFormat(_Format):
    content: str | None = None
    content_bin: str | None = msgspec.field(name="content-bin", default=None)

    @property
    def content_bytes(self) -> bytes:
        return _bytes(self.content, self.content_bin, "http-stream content-bin")


class WsMessageFormat(_Format):
    content: str | None = None
    content_bin: str | None = msgspec.field(name="content-bin", default=None)
    type: Literal["text", "binary", "ping", "pong"] | None = None
    code: int | None = None
    reason: str | None = None

    @property
    def content_bytes(self) -> bytes:
        return _bytes(self.content, self.content_bin, "ws-message content-bin")

    @property
    def is_binary(self) -> bool:
        return self.type == "binary" or (self.type is None and self.content_bin is not None)


class Formats(msgspec.Struct, forbid_unknown_fields=False, omit_defaults=True):
    http_response: HttpResponseFormat | None = msgspec.field(name="http-response", default=None)
    http_stream: HttpStreamFormat | None = msgspec.field(name="http-stream", default=None)
    ws_message: WsMessageFormat | None = msgspec.field(name="ws-message", default=None)


class Item(msgspec.Struct, forbid_unknown_fields=False, omit_defaults=True):
    channel: str
    id: str | None = None
    prev_id: str | None = msgspec.field(name="prev-id", default=None)
    meta: dict[str, str] = msgspec.field(default_factory=dict)
    no_seq: bool = msgspec.field(name="no-seq", default=False)
    size: int | None = None
    formats: Formats | None = None
    # pubcontrol's HTTP shape: formats beside the channel.
    http_response: HttpResponseFormat | None = msgspec.field(name="http-response", default=None)
    http_stream: HttpStreamFormat | None = msgspec.field(name="http-stream", default=None)
    ws_message: WsMessageFormat | None = msgspec.field(name="ws-message", default=None)

    def normalized(self) -> Item:
        """One shape: formats under ``formats`` only."""
        f = self.formats or Formats()
        merged = Formats(http_response=f.http_response or self.http_response,
                         http_stream=f.http_stream or self.http_stream,
                         ws_message=f.ws_message or self.ws_message)
        return Item(channel=self.channel, id=self.id, prev_id=self.prev_id, meta=self.meta,
                    no_seq=self.no_seq, size=self.size, formats=merged)


class _Body(msgspec.Struct):
    items: list[Item]


_decoder = msgspec.json.Decoder(_Body)
_item_decoder = msgspec.json.Decoder(Item)
_encoder = msgspec.json.Encoder()


def _bytes(text: str | None, b64: str | None, what: str) -> bytes:
    if b64 is not None:
        try:
            return base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise GripError(f"{what}: not valid base64") from None
    return (text or "").encode()


def _check(item: Item, where: str) -> Item:
    if not item.channel:
        raise GripError(f"{where}: channel must not be empty")
    f = item.formats
    assert f is not None
    if f.http_response is None and f.http_stream is None and f.ws_message is None:
        raise GripError(f"{where}: no formats (http-response, http-stream or ws-message)")
    # Decode base64 now: a bad item is refused before anything is published.
    try:
        if f.http_response is not None:
            _ = f.http_response.body_bytes
        if f.http_stream is not None:
            _ = f.http_stream.content_bytes
        if f.ws_message is not None:
            _ = f.ws_message.content_bytes
    except GripError as exc:
        raise GripError(f"{where}: {exc}") from None
    return item


def parse_publish(body: bytes) -> list[Item]:
    """Every item of a publish request, normalised, or a GripError saying what is wrong (the
    message follows Pushpin's ``Invalid format: ...``)."""
    try:
        doc = _decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise GripError(f"Invalid format: {exc}") from None
    except msgspec.DecodeError as exc:
        raise GripError(f"Invalid format: body is not JSON: {exc}") from None
    except RecursionError:  # msgspec's answer to JSON nested deeper than the stack
        raise GripError("Invalid format: body is nested too deeply") from None
    return [_check(item.normalized(), f"Invalid format: items[{i}]")
            for i, item in enumerate(doc.items)]


def encode_item(item: Item) -> bytes:
    return _encoder.encode(item)


def decode_item(data: bytes | str) -> Item:
    return _item_decoder.decode(data)


def export(channel: str, formats: Mapping[str, Any], id: str | None = None,
           prev_id: str | None = None, meta: Mapping[str, str] | None = None) -> dict[str, Any]:
    """An item in pubcontrol's HTTP shape (formats at the top level), for publishers."""
    out: dict[str, Any] = {"channel": channel}
    if id is not None:
        out["id"] = id
    if prev_id is not None:
        out["prev-id"] = prev_id
    if meta:
        out["meta"] = dict(meta)
    out.update(formats)
    return out
