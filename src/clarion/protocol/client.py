"""Centrifugo's JSON client protocol (v2): command decoding and reply/push encoding.

Frames carry one or more JSON objects separated by ``\\n``. Publication ``data`` travels as raw
JSON (msgspec.Raw), never re-encoded on its way through the hub.
"""

from __future__ import annotations

from typing import Any

import msgspec

from clarion.errors import Disconnect
from clarion.protocol import codes

_EMPTY = msgspec.Raw()


class StreamPositionIn(msgspec.Struct, omit_defaults=True):
    offset: int = 0
    epoch: str = ""


class ServerSubRecovery(msgspec.Struct, omit_defaults=True):
    """Where a client left a server-side subscription: sent back in ``connect.subs`` so the
    new connection recovers what it missed (Centrifugo's ``SubscribeRequest`` in a connect)."""

    recover: bool = False
    epoch: str = ""
    offset: int = 0


class ConnectRequest(msgspec.Struct, omit_defaults=True):
    token: str = ""
    data: msgspec.Raw = _EMPTY
    name: str = ""
    version: str = ""
    subs: dict[str, ServerSubRecovery] = {}


class SubscribeRequest(msgspec.Struct, omit_defaults=True):
    channel: str
    token: str = ""
    recover: bool = False
    epoch: str = ""
    offset: int = 0
    data: msgspec.Raw = _EMPTY
    positioned: bool = False
    recoverable: bool = False
    join_leave: bool = False


class ChannelRequest(msgspec.Struct, omit_defaults=True):
    channel: str


class PublishRequest(msgspec.Struct, omit_defaults=True):
    channel: str
    data: msgspec.Raw = _EMPTY


class HistoryRequest(msgspec.Struct, omit_defaults=True):
    channel: str
    limit: int = 0
    since: StreamPositionIn | None = None
    reverse: bool = False


class RefreshRequest(msgspec.Struct, omit_defaults=True):
    token: str


class SubRefreshRequest(msgspec.Struct, omit_defaults=True):
    channel: str
    token: str


class SendRequest(msgspec.Struct, omit_defaults=True):
    data: msgspec.Raw = _EMPTY


class RPCRequest(msgspec.Struct, omit_defaults=True):
    data: msgspec.Raw = _EMPTY
    method: str = ""


class Command(msgspec.Struct, omit_defaults=True):
    id: int = 0
    connect: ConnectRequest | None = None
    subscribe: SubscribeRequest | None = None
    unsubscribe: ChannelRequest | None = None
    publish: PublishRequest | None = None
    presence: ChannelRequest | None = None
    presence_stats: ChannelRequest | None = None
    history: HistoryRequest | None = None
    ping: dict[str, Any] | None = None
    send: SendRequest | None = None
    rpc: RPCRequest | None = None
    refresh: RefreshRequest | None = None
    sub_refresh: SubRefreshRequest | None = None

    def method(self) -> str:
        """The one method this command carries, "" for an empty command (a pong)."""
        for name in _METHODS:
            if getattr(self, name) is not None:
                return name
        return ""


_METHODS = (
    "connect", "subscribe", "unsubscribe", "publish", "presence", "presence_stats",
    "history", "ping", "send", "rpc", "refresh", "sub_refresh",
)

_command_decoder = msgspec.json.Decoder(Command)
_encoder = msgspec.json.Encoder()


def decode_commands(frame: bytes) -> list[Command]:
    """Every command in one frame; a malformed frame is a bad-request disconnect (3501)."""
    out: list[Command] = []
    if not frame.isascii():
        # Binary frames are not checked by the WebSocket layer; raw data must be UTF-8 too.
        try:
            frame.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Disconnect(*codes.BAD_REQUEST) from exc
    for line in frame.split(b"\n"):
        if not line.strip():
            continue
        try:
            out.append(_command_decoder.decode(line))
        # msgspec raises RecursionError for JSON nested deeper than the interpreter's stack
        # allows (a few hundred levels of "[" are enough): that is a malformed frame too.
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
            raise Disconnect(*codes.BAD_REQUEST) from exc
    return out


def encode(obj: object) -> bytes:
    return _encoder.encode(obj)


def reply(command_id: int, method: str, result: object) -> bytes:
    return b'{"id":%d,"%s":%s}' % (command_id, method.encode(), _encoder.encode(result))


def error_reply(command_id: int, code: int, message: str, temporary: bool = False) -> bytes:
    err: dict[str, object] = {"code": code, "message": message}
    if temporary:
        err["temporary"] = True
    return b'{"id":%d,"error":%s}' % (command_id, _encoder.encode(err))


EMPTY_REPLY = b"{}"  # the server's ping


def encode_str(value: str) -> bytes:
    return _encoder.encode(value)


def client_info_json(client: str, user: str, conn_info: bytes | None,
                     chan_info: bytes | None) -> bytes:
    parts = [b'{"user":', encode_str(user), b',"client":', encode_str(client)]
    if conn_info is not None:
        parts += [b',"conn_info":', conn_info]
    if chan_info is not None:
        parts += [b',"chan_info":', chan_info]
    parts.append(b"}")
    return b"".join(parts)


def publication_json(data: bytes, offset: int, info: bytes | None,
                     tags: dict[str, str] | None = None) -> bytes:
    """A Publication object. Zero fields are left out, as the protobuf JSON mapping does."""
    out = b'{"data":' + data
    if info is not None:
        out += b',"info":' + info
    if offset:
        out += b',"offset":%d' % offset
    if tags:
        out += b',"tags":' + _encoder.encode(tags)
    return out + b"}"


def push_body(channel_json: bytes, kind: bytes, body: bytes) -> bytes:
    """A push's body as unidirectional transports carry it: {"channel":…,"pub":{…}}."""
    return b'{"channel":' + channel_json + b',"' + kind + b'":' + body + b"}"


def push_frame(channel_json: bytes, kind: bytes, body: bytes) -> bytes:
    """A push as the bidirectional protocol carries it: {"push":{"channel":…,"pub":{…}}}."""
    return b'{"push":{"channel":' + channel_json + b',"' + kind + b'":' + body + b"}}"


def disconnect_body(code: int, reason: str, reconnect: bool) -> bytes:
    return _encoder.encode({"disconnect": {"code": code, "reason": reason,
                                           "reconnect": reconnect}})
