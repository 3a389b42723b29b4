"""Centrifugo's HTTP proxy protocol: the requests the hub sends to the app's backend and the
answers it accepts (docs/reference/proxy-protocol.md).

Sans-IO: encoding requests and decoding answers, nothing else. A decoding failure raises
``ProxyAnswerError`` whose message names the field (msgspec's ``at `$.result.user```), so that
the hub's log says what the backend got wrong.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import msgspec

from clarion.errors import ClarionError

_EMPTY = msgspec.Raw()
MAX_REASON_BYTES = 123  # a WebSocket close frame's reason


class ProxyAnswerError(ClarionError):
    """The backend answered something that is not a valid proxy answer."""


# -- requests ----------------------------------------------------------------------------------

# A JSON payload a request may leave out: msgspec writes an empty Raw as nothing at all (not
# valid JSON), so an absent payload is UNSET, which is never written.
Payload = msgspec.Raw | msgspec.UnsetType


def payload(data: bytes | msgspec.Raw | None) -> Payload:
    """``data`` for a request field: UNSET when there is none."""
    if not data:
        return msgspec.UNSET
    return data if isinstance(data, msgspec.Raw) else msgspec.Raw(data)


class _Base(msgspec.Struct, omit_defaults=True, kw_only=True):
    # No defaults: omit_defaults would leave them out, and Centrifugo always sends them.
    client: str
    transport: str
    protocol: str
    encoding: str


class _UserBase(_Base, omit_defaults=True, kw_only=True):
    # Always present, "" for an anonymous connection (so not omitted as a default).
    user: str
    meta: Payload = msgspec.UNSET


class ConnectRequest(_Base, omit_defaults=True, kw_only=True):
    name: str = ""
    version: str = ""
    data: Payload = msgspec.UNSET


class RefreshRequest(_UserBase, omit_defaults=True, kw_only=True):
    pass


class SubscribeRequest(_UserBase, omit_defaults=True, kw_only=True):
    channel: str
    data: Payload = msgspec.UNSET


class PublishRequest(_UserBase, omit_defaults=True, kw_only=True):
    channel: str
    data: Payload = msgspec.UNSET


class SubRefreshRequest(_UserBase, omit_defaults=True, kw_only=True):
    channel: str


class RPCRequest(_UserBase, omit_defaults=True, kw_only=True):
    method: str = ""
    data: Payload = msgspec.UNSET


ProxyRequest = (ConnectRequest | RefreshRequest | SubscribeRequest | PublishRequest
                | SubRefreshRequest | RPCRequest)

_encoder = msgspec.json.Encoder()


def encode_request(request: ProxyRequest) -> bytes:
    # ``user`` has no default, so it is sent even when "" (an anonymous connection).
    return _encoder.encode(request)


# -- answers -----------------------------------------------------------------------------------


class Error(msgspec.Struct, kw_only=True):
    code: int
    message: str = ""
    temporary: bool = False

    def __post_init__(self) -> None:
        if not 100 <= self.code <= 1999:
            raise ValueError("error.code: must be between 100 and 1999 (applications use "
                             "400-1999)")


class DisconnectAnswer(msgspec.Struct, kw_only=True):
    code: int
    reason: str = ""

    def __post_init__(self) -> None:
        if not 3000 <= self.code <= 4999:
            raise ValueError("disconnect.code: must be between 3000 and 4999 (applications "
                             "use 4000-4999)")
        encoded = self.reason.encode()
        if len(encoded) > MAX_REASON_BYTES:
            self.reason = encoded[:MAX_REASON_BYTES].decode("utf-8", "ignore")


class BoolValue(msgspec.Struct):
    value: bool


class Override(msgspec.Struct, kw_only=True):
    presence: BoolValue | None = None
    join_leave: BoolValue | None = None
    force_push_join_leave: BoolValue | None = None
    force_positioning: BoolValue | None = None
    force_recovery: BoolValue | None = None

    def changes(self) -> dict[str, bool]:
        """The channel options this override sets."""
        return {name: value.value for name in self.__struct_fields__
                if (value := getattr(self, name)) is not None}


class SubscribeOptions(msgspec.Struct, kw_only=True):
    info: msgspec.Raw = _EMPTY
    b64info: str = ""
    data: msgspec.Raw = _EMPTY
    b64data: str = ""
    override: Override | None = None


class ConnectResult(msgspec.Struct, kw_only=True):
    user: str
    expire_at: int = 0
    info: msgspec.Raw = _EMPTY
    b64info: str = ""
    data: msgspec.Raw = _EMPTY
    b64data: str = ""
    channels: list[str] = []
    subs: dict[str, SubscribeOptions] = {}
    meta: msgspec.Raw = _EMPTY


class RefreshResult(msgspec.Struct, kw_only=True):
    expired: bool = False
    expire_at: int = 0
    info: msgspec.Raw = _EMPTY
    b64info: str = ""


class SubscribeResult(msgspec.Struct, kw_only=True):
    info: msgspec.Raw = _EMPTY
    b64info: str = ""
    data: msgspec.Raw = _EMPTY
    b64data: str = ""
    override: Override | None = None
    expire_at: int = 0


class PublishResult(msgspec.Struct, kw_only=True):
    data: msgspec.Raw = _EMPTY
    b64data: str = ""
    skip_history: bool = False
    tags: dict[str, str] = {}
    idempotency_key: str = ""


class RPCResult(msgspec.Struct, kw_only=True):
    data: msgspec.Raw = _EMPTY
    b64data: str = ""


Result = ConnectResult | RefreshResult | SubscribeResult | PublishResult | RPCResult


class Answer(msgspec.Struct, kw_only=True):
    """What the backend answered: a result, or its error, or its disconnect."""

    result: Any = None
    error: Error | None = None
    disconnect: DisconnectAnswer | None = None


def _answer_type(result: type[Any]) -> type[Any]:
    return msgspec.defstruct(f"{result.__name__}Answer", [
        ("result", result | None, None),
        ("error", Error | None, None),
        ("disconnect", DisconnectAnswer | None, None),
    ], kw_only=True)


_DECODERS: dict[type[Any], msgspec.json.Decoder[Any]] = {
    result: msgspec.json.Decoder(_answer_type(result))
    for result in (ConnectResult, RefreshResult, SubscribeResult, PublishResult, RPCResult)
}


def decode_answer(body: bytes, result_type: type[Result]) -> Answer:
    """The backend's answer; exactly one of result, error and disconnect is set."""
    try:
        raw = _DECODERS[result_type].decode(body)
    except msgspec.ValidationError as exc:
        raise ProxyAnswerError(f"wrong shape: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ProxyAnswerError(f"not JSON: {exc}") from None
    except RecursionError:
        raise ProxyAnswerError("not JSON: nested too deeply") from None
    given = [name for name in ("result", "error", "disconnect")
             if getattr(raw, name) is not None]
    if len(given) != 1:
        raise ProxyAnswerError(
            "wrong shape: the answer must have exactly one of result, error and disconnect"
            + (f" (it has {', '.join(given)})" if given else ""))
    answer = Answer(result=raw.result, error=raw.error, disconnect=raw.disconnect)
    if answer.result is not None:
        _check_payloads(answer.result)
    return answer


def _check_payloads(result: Any) -> None:
    """Every JSON/base64 pair decodes to JSON (the hub speaks the JSON protocol)."""
    for name in ("info", "data"):
        if hasattr(result, name):
            json_payload(result, name)
    for channel, options in getattr(result, "subs", {}).items():
        try:
            json_payload(options, "info")
            json_payload(options, "data")
        except ProxyAnswerError as exc:
            raise ProxyAnswerError(f"{exc} - at `$.result.subs[{channel!r}]`") from None


def json_payload(obj: Any, name: str) -> bytes | None:
    """``name`` or ``b64<name>`` of an answer as JSON bytes; None when neither is set."""
    raw: msgspec.Raw = getattr(obj, name)
    if raw and bytes(raw) != b"null":
        return bytes(raw)
    b64: str = getattr(obj, "b64" + name)
    if not b64:
        return None
    try:
        decoded = base64.b64decode(b64, validate=True)
        msgspec.json.decode(decoded)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise ProxyAnswerError(f"wrong shape: b64{name} must be base64 of JSON (the hub "
                               f"speaks the JSON protocol)") from None
    return decoded
