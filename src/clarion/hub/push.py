"""A push encoded once per transport format, shared by every subscriber of a channel."""

from __future__ import annotations

from clarion.broker.base import ClientInfo, Publication
from clarion.protocol import client as proto
from clarion.protocol import cursor as cursors
from clarion.protocol import sse
from clarion.protocol.websocket import text_frame


def info_json(info: ClientInfo | None) -> bytes | None:
    if info is None:
        return None
    return proto.client_info_json(info.client, info.user, info.conn_info, info.chan_info)


class EncodedPush:
    """``kind`` is b"pub", b"join" or b"leave". Each format is built on first use only."""

    __slots__ = (
        "_body",
        "_sse",
        "_stream",
        "_ws",
        "body",
        "channel",
        "channel_json",
        "epoch",
        "kind",
        "offset",
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

    @classmethod
    def publication(cls, channel: str, pub: Publication, epoch: str) -> EncodedPush:
        body = proto.publication_json(pub.data, pub.offset, info_json(pub.info), pub.tags)
        return cls(channel, b"pub", body, pub.offset, epoch, pub.time)

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
