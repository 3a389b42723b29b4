"""A push encoded once per transport format, shared by every subscriber of a channel."""

from __future__ import annotations

from typing import TypeVar

from clarion.broker.base import ClientInfo, Publication
from clarion.protocol import client as proto
from clarion.protocol import cursor as cursors
from clarion.protocol import sse
from clarion.protocol.grip import items as grip_items
from clarion.protocol.grip import mapping as grip_mapping
from clarion.protocol.websocket import BINARY, PING, PONG, TEXT, encode_frame, text_frame

# A publication made through the GRIP publish API carries its item (all formats) under this
# tag, so GRIP subscribers on every node get the exact formats. Native clients never see it.
GRIP_TAG = "_grip"
# Set on GRIP items with no content for native clients (a close or hint action).
GRIP_ONLY_TAG = "_grip_only"


_F = TypeVar("_F", grip_items.HttpStreamFormat, grip_items.WsMessageFormat)


def grip_ws_opcode(fmt: grip_items.WsMessageFormat) -> int:
    kind = fmt.type or ("binary" if fmt.is_binary else "text")
    return {"binary": BINARY, "ping": PING, "pong": PONG}.get(kind, TEXT)


def visible_tags(tags: dict[str, str] | None) -> dict[str, str] | None:
    if tags and GRIP_TAG in tags:
        return {k: v for k, v in tags.items() if k not in (GRIP_TAG, GRIP_ONLY_TAG)} or None
    return tags


def info_json(info: ClientInfo | None) -> bytes | None:
    if info is None:
        return None
    return proto.client_info_json(info.client, info.user, info.conn_info, info.chan_info)


class EncodedPush:
    """``kind`` is b"pub", b"join" or b"leave". Each format is built on first use only."""

    __slots__ = (
        "_body",
        "_grip",
        "_grip_stream",
        "_grip_ws",
        "_sse",
        "_stream",
        "_uni_line",
        "_uni_sse",
        "_uni_ws",
        "_ws",
        "body",
        "channel",
        "channel_json",
        "epoch",
        "grip_only",
        "kind",
        "offset",
        "pub",
        "time",
    )

    def __init__(self, channel: str, kind: bytes, body: bytes, offset: int = 0, epoch: str = "",
                 time: float = 0.0) -> None:
        self.channel = channel
        self.channel_json = proto.encode_str(channel)
        self.kind = kind
        self.body = body
        self.offset = offset
        self.epoch = epoch
        self.time = time
        self._ws: bytes | None = None
        self._sse: bytes | None = None
        self._stream: bytes | None = None
        self._body: bytes | None = None
        self._uni_ws: bytes | None = None
        self._uni_sse: bytes | None = None
        self._uni_line: bytes | None = None
        self._grip: grip_items.Item | None = None
        self._grip_stream: bytes | bool | None = False  # False: not computed yet
        self._grip_ws: bytes | bool | None = False
        self.pub: Publication | None = None
        self.grip_only = False

    @classmethod
    def publication(cls, channel: str, pub: Publication, epoch: str) -> EncodedPush:
        tags = pub.tags
        grip_only = False
        if tags and GRIP_TAG in tags:
            grip_only = GRIP_ONLY_TAG in tags
            tags = visible_tags(tags)
        body = proto.publication_json(pub.data, pub.offset, info_json(pub.info), tags)
        enc = cls(channel, b"pub", body, pub.offset, epoch, pub.time)
        enc.pub = pub
        enc.grip_only = grip_only
        return enc

    @property
    def grip(self) -> grip_items.Item:
        """This publication as a GRIP item: the one it was published as, or the native data
        mapped onto the GRIP formats (``clarion.protocol.grip.mapping``)."""
        item = self._grip
        if item is None:
            pub = self.pub
            assert pub is not None, "only publications go to GRIP subscribers"
            raw = pub.tags.get(GRIP_TAG) if pub.tags else None
            if raw is not None:
                item = grip_items.decode_item(raw)
            else:
                item = grip_mapping.item_from_native(self.channel, pub.data)
            self._grip = item
        return item

    def _plain(self, fmt: _F | None) -> _F | None:
        """``fmt`` if it is a plain send: no content filters, no ids to track."""
        item = self.grip
        if (fmt is None or fmt.action != "send" or fmt.content_filters
                or item.id is not None or item.prev_id is not None):
            return None
        return fmt

    @property
    def grip_plain_stream(self) -> bytes | None:
        """The ``http-stream`` content when every stream subscriber without filters gets
        exactly it (a send, no content filters, no ids to track); else None."""
        value = self._grip_stream
        if value is False:
            fmt = self._plain(self.grip.formats.http_stream if self.grip.formats else None)
            value = fmt.content_bytes if fmt is not None else None
            self._grip_stream = value
        return value  # type: ignore[return-value]

    @property
    def grip_plain_ws(self) -> bytes | None:
        """The whole WebSocket frame for ``ws-message`` under the same conditions."""
        value = self._grip_ws
        if value is False:
            ws = self._plain(self.grip.formats.ws_message if self.grip.formats else None)
            value = encode_frame(grip_ws_opcode(ws), ws.content_bytes) if ws is not None else None
            self._grip_ws = value
        return value  # type: ignore[return-value]

    @classmethod
    def presence_event(cls, channel: str, kind: bytes, info: ClientInfo) -> EncodedPush:
        body = b'{"info":' + (info_json(info) or b"{}") + b"}"
        return cls(channel, kind, body)

    @property
    def ws(self) -> bytes:
        """A whole WebSocket text frame for the bidirectional protocol."""
        if self._ws is None:
            self._ws = text_frame(proto.push_frame(self.channel_json, self.kind, self.body))
        return self._ws

    @property
    def uni_body(self) -> bytes:
        if self._body is None:
            self._body = proto.push_body(self.channel_json, self.kind, self.body)
        return self._body

    @property
    def single_cursor(self) -> str:
        return cursors.encode_entry(self.channel, self.offset, self.epoch)

    @property
    def sse_single(self) -> bytes:
        """An SSE event for a connection whose only channel is this one."""
        if self._sse is None:
            cid = self.single_cursor if self.offset else None
            self._sse = sse.event(self.uni_body, id=cid)
        return self._sse

    @property
    def stream_single(self) -> bytes:
        """An NDJSON line for a connection whose only channel is this one."""
        if self._stream is None:
            self._stream = self.stream_line(self.single_cursor if self.offset else None)
        return self._stream

    def stream_line(self, cursor: str | None) -> bytes:
        body = self.uni_body
        if cursor is not None:
            body = body[:-1] + b',"cursor":' + proto.encode_str(cursor) + b"}"
        return body + b"\n"

    # Centrifugo's unidirectional transports carry the same push body as Clarion's own
    # (``uni_body``), framed without Clarion's cursor (Centrifugo has no Last-Event-ID).

    @property
    def uni_ws(self) -> bytes:
        """A WebSocket text frame for ``/connection/uni_websocket``."""
        if self._uni_ws is None:
            self._uni_ws = text_frame(self.uni_body)
        return self._uni_ws

    @property
    def uni_sse(self) -> bytes:
        """An SSE event (``data:`` only) for ``/connection/uni_sse``."""
        if self._uni_sse is None:
            self._uni_sse = sse.event(self.uni_body)
        return self._uni_sse

    @property
    def uni_line(self) -> bytes:
        """A JSON line for ``/connection/uni_http_stream``."""
        if self._uni_line is None:
            self._uni_line = self.uni_body + b"\n"
        return self._uni_line
