"""GRIP response instructions: what an origin's answer asks the proxy to do.

Two forms carry the same instruction. The header form puts ``Grip-*`` headers on an ordinary
response; the JSON form is a 200 response with ``Content-Type: application/grip-instruct`` whose
body holds ``{"hold": {...}, "response": {...}}``. ``parse`` reads either into an ``Instruct``;
the ``*_header`` builders write the header form for origins (the Django middleware).
Defaults and bounds are Pushpin's: response timeout 55 s (minimum 5), keep-alive 55 s, next-link
timeout 120 s, at most 5 filters per channel.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from clarion.errors import GripError
from clarion.protocol.grip.headers import format_param, parse_list, parse_params

DEFAULT_TIMEOUT = 55
MIN_TIMEOUT = 5
DEFAULT_KEEP_ALIVE_TIMEOUT = 55
DEFAULT_NEXT_LINK_TIMEOUT = 120
MAX_FILTERS = 5
INSTRUCT_CONTENT_TYPE = "application/grip-instruct"
FILTERS = frozenset({"skip-self", "skip-users", "require-sub", "build-id", "var-subst"})

HoldMode = Literal["response", "stream"]
Headers = list[tuple[str, str]]

# Never forwarded from an origin's answer to a client.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length",
                        "te", "trailer", "upgrade", "proxy-connection"})


@dataclass(slots=True)
class Channel:
    name: str
    prev_id: str | None = None
    filters: tuple[str, ...] = ()


@dataclass(slots=True)
class KeepAlive:
    content: bytes
    timeout: int = DEFAULT_KEEP_ALIVE_TIMEOUT
    mode: Literal["idle", "interval"] = "idle"


@dataclass(slots=True)
class Link:
    uri: str
    timeout: int = DEFAULT_NEXT_LINK_TIMEOUT


@dataclass(slots=True)
class Response:
    code: int
    reason: str
    headers: Headers
    body: bytes


@dataclass(slots=True)
class Instruct:
    """``hold`` is None when the origin asks for no hold (it may still set status or links)."""

    response: Response
    hold: HoldMode | None = None
    channels: list[Channel] = field(default_factory=list)
    timeout: int = DEFAULT_TIMEOUT
    keep_alive: KeepAlive | None = None
    meta: dict[str, str] = field(default_factory=dict)
    next_link: Link | None = None
    gone_link: str | None = None

    @property
    def is_grip(self) -> bool:
        return (self.hold is not None or self.next_link is not None
                or self.gone_link is not None)


def is_instruct(headers: Iterable[tuple[str, str]]) -> bool:
    """Whether a response carries any GRIP instruction (so the proxy must read all of it)."""
    for name, value in headers:
        lname = name.lower()
        if lname.startswith("grip-"):
            return True
        if lname == "content-type" and value.split(";")[0].strip() == INSTRUCT_CONTENT_TYPE:
            return True
    return False


def _all(headers: Headers, name: str) -> list[str]:
    return [v for k, v in headers if k.lower() == name]


def _first(headers: Headers, name: str) -> str | None:
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


def _int(value: str | int | None, what: str, minimum: int = 0) -> int:
    try:
        number = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise GripError(f"{what}: not an integer: {value!r}") from None
    if number < minimum:
        raise GripError(f"{what}: must be at least {minimum}, got {number}")
    return number


def unescape_cstring(value: str) -> bytes:
    out = bytearray()
    raw = value.encode()
    i = 0
    while i < len(raw):
        ch = raw[i]
        if ch != 0x5C:  # backslash
            out.append(ch)
            i += 1
            continue
        if i + 1 >= len(raw):
            raise GripError("Grip-Keep-Alive: cstring ends in a lone backslash")
        nxt = raw[i + 1]
        if nxt == 0x5C:
            out.append(0x5C)
        elif nxt == ord("r"):
            out.append(0x0D)
        elif nxt == ord("n"):
            out.append(0x0A)
        elif nxt == ord("x"):
            try:
                out.append(int(raw[i + 2:i + 4].decode(), 16))
            except ValueError:
                raise GripError("Grip-Keep-Alive: bad \\x escape in cstring") from None
            if len(raw[i + 2:i + 4]) != 2:
                raise GripError("Grip-Keep-Alive: bad \\x escape in cstring")
            i += 2
        else:
            raise GripError(f"Grip-Keep-Alive: unknown escape \\{chr(nxt)} in cstring")
        i += 2
    return bytes(out)


def escape_cstring(data: bytes) -> str | None:
    """``data`` in cstring form, or None when base64 is the safer carrier."""
    if data[:1] in (b" ", b"\t") or data[-1:] in (b" ", b"\t"):
        return None  # header parsing would trim it
    out = []
    for b in data:
        if b == 0x5C:
            out.append("\\\\")
        elif b == 0x0D:
            out.append("\\r")
        elif b == 0x0A:
            out.append("\\n")
        elif 0x20 <= b < 0x7F and b not in (0x3B, 0x2C, 0x22, 0x3D):  # ; , " = are syntax
            out.append(chr(b))
        else:
            return None
    return "".join(out)


def _whole(param: tuple[str, str | None]) -> str:
    """A leading token that may itself contain ``=`` (a URI, keep-alive data)."""
    name, value = param
    return name if value is None else f"{name}={value}"


def _b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise GripError(f"{what}: not valid base64") from None


def _channel(params: list[tuple[str, str | None]]) -> Channel:
    name = params[0][0]
    if not name or params[0][1] is not None:
        raise GripError(f"Grip-Channel: bad channel name {name!r}")
    prev_id = None
    filters = []
    for key, value in params[1:]:
        if key == "prev-id":
            prev_id = value
        elif key == "filter" and value:
            filters.append(value)
    return _checked_channel(Channel(name, prev_id, tuple(filters)))


def _checked_channel(channel: Channel) -> Channel:
    if len(channel.filters) > MAX_FILTERS:
        raise GripError(f"too many filters for channel {channel.name!r} "
                        f"({len(channel.filters)}, at most {MAX_FILTERS})")
    unknown = [f for f in channel.filters if f not in FILTERS]
    if unknown:
        raise GripError(f"channel {channel.name!r}: unknown filter {unknown[0]!r}")
    return channel


def _keep_alive(value: str) -> KeepAlive:
    params = parse_params(value)
    if not params or not params[0][0]:
        raise GripError("Grip-Keep-Alive cannot be empty")
    data = _whole(params[0])
    opts = dict(params[1:])
    mode = opts.get("mode") or "idle"
    if mode not in ("idle", "interval"):
        raise GripError(f"Grip-Keep-Alive: no such mode {mode!r}")
    timeout = _int(opts.get("timeout", DEFAULT_KEEP_ALIVE_TIMEOUT), "Grip-Keep-Alive timeout", 1)
    fmt = opts.get("format") or "raw"
    if fmt == "raw":
        content = data.encode()
    elif fmt == "cstring":
        content = unescape_cstring(data)
    elif fmt == "base64":
        content = _b64(data, "Grip-Keep-Alive")
    else:
        raise GripError(f"Grip-Keep-Alive: no such format {fmt!r}")
    return KeepAlive(content, timeout, mode)  # type: ignore[arg-type]


def _links(values: list[str]) -> tuple[Link | None, str | None]:
    next_link: Link | None = None
    gone: str | None = None
    for params in parse_list(values):
        target = _whole(params[0])
        if len(target) <= 2 or target[0] != "<" or target[-1] != ">":
            raise GripError(f"Grip-Link: expected <uri>, got {target!r}")
        uri = target[1:-1]
        opts = dict(params[1:])
        if opts.get("rel") == "next":
            next_link = Link(uri, _int(opts.get("timeout", DEFAULT_NEXT_LINK_TIMEOUT),
                                       "Grip-Link timeout"))
        elif opts.get("rel") == "gone":
            gone = uri
    return next_link, gone


def _status(value: str) -> tuple[int, str]:
    code, _, reason = value.strip().partition(" ")
    number = _int(code, "Grip-Status")
    if number > 999 or number < 100:
        raise GripError(f"Grip-Status: invalid status code {code!r}")
    return number, reason


class _JsonChannel(msgspec.Struct, forbid_unknown_fields=False):
    name: str
    prev_id: str | None = msgspec.field(name="prev-id", default=None)
    filters: list[str] = []


class _JsonKeepAlive(msgspec.Struct):
    content: str | None = None
    content_bin: str | None = msgspec.field(name="content-bin", default=None)
    timeout: int = DEFAULT_KEEP_ALIVE_TIMEOUT
    mode: Literal["idle", "interval"] = "idle"


class _JsonHold(msgspec.Struct, forbid_unknown_fields=False):
    mode: Literal["response", "stream"] = "response"
    channels: list[_JsonChannel] = []
    timeout: int | None = None
    keep_alive: _JsonKeepAlive | None = msgspec.field(name="keep-alive", default=None)
    meta: dict[str, str] = {}


class _JsonResponse(msgspec.Struct, forbid_unknown_fields=False):
    code: int | None = None
    reason: str | None = None
    headers: list[tuple[str, str]] | dict[str, str] = []
    body: str | None = None
    body_bin: str | None = msgspec.field(name="body-bin", default=None)


class _JsonInstruct(msgspec.Struct, forbid_unknown_fields=False):
    hold: _JsonHold | None = None
    response: _JsonResponse | None = None


def _pairs(headers: list[tuple[str, str]] | dict[str, str]) -> Headers:
    return list(headers.items()) if isinstance(headers, dict) else [tuple(h) for h in headers]  # type: ignore[misc]


def _from_json(body: bytes, base: Instruct) -> Instruct:
    try:
        doc = msgspec.json.decode(body, type=_JsonInstruct)
    except msgspec.ValidationError as exc:
        raise GripError(f"application/grip-instruct: {exc}") from None
    except msgspec.DecodeError as exc:
        raise GripError(f"application/grip-instruct: not JSON: {exc}") from None
    except RecursionError:  # msgspec's answer to JSON nested deeper than the stack
        raise GripError("application/grip-instruct: nested too deeply") from None
    out = base
    out.response = Response(200, "OK", [], b"")
    if doc.response is not None:
        r = doc.response
        if r.code is not None:
            if not 100 <= r.code <= 999:
                raise GripError(f"application/grip-instruct: response code {r.code} invalid")
            out.response.code = r.code
            out.response.reason = ""
        if r.reason:
            out.response.reason = r.reason
        out.response.headers = _pairs(r.headers)
        if r.body_bin is not None:
            out.response.body = _b64(r.body_bin, "response body-bin")
        elif r.body is not None:
            out.response.body = r.body.encode()
    hold = doc.hold
    if hold is not None:
        out.hold = hold.mode
        out.channels = [_checked_channel(Channel(c.name, c.prev_id, tuple(c.filters)))
                        for c in hold.channels]
        if hold.timeout is not None:
            out.timeout = _int(hold.timeout, "hold timeout")
        if hold.keep_alive is not None:
            ka = hold.keep_alive
            if ka.content_bin is not None:
                content = _b64(ka.content_bin, "keep-alive content-bin")
            else:
                content = (ka.content or "").encode()
            out.keep_alive = KeepAlive(content, max(1, ka.timeout), ka.mode)
        out.meta.update(hold.meta)
    return out


def parse(code: int, reason: str, headers: Headers, body: bytes) -> Instruct:
    """Read an origin's answer. The returned ``response`` is what the client is sent when the
    hold ends without a publication (or at once when there is no hold): ``Grip-*`` and
    hop-by-hop headers removed, ``Grip-Status`` and ``Grip-Expose-Headers`` applied."""
    inst = Instruct(Response(code, reason, [], body))
    hold = _first(headers, "grip-hold")
    if hold is not None:
        if hold.strip() not in ("response", "stream"):
            raise GripError(f"Grip-Hold must be 'response' or 'stream', got {hold!r}")
        inst.hold = hold.strip()  # type: ignore[assignment]
    for params in parse_list(_all(headers, "grip-channel")):
        inst.channels.append(_channel(params))
    timeout = _first(headers, "grip-timeout")
    if timeout is not None:
        inst.timeout = _int(timeout.strip(), "Grip-Timeout")
    keep_alive = _first(headers, "grip-keep-alive")
    if keep_alive is not None:
        inst.keep_alive = _keep_alive(keep_alive)
    for params in parse_list(_all(headers, "grip-set-meta")):
        key, value = params[0]
        if not key:
            raise GripError("Grip-Set-Meta: empty name")
        inst.meta[key] = value or ""
    status = _first(headers, "grip-status")
    if status:
        inst.response.code, inst.response.reason = _status(status)
    inst.next_link, inst.gone_link = _links(_all(headers, "grip-link"))
    expose = {v.strip().lower() for value in _all(headers, "grip-expose-headers")
              for v in value.split(",") if v.strip()}
    inst.response.headers = [
        (k, v) for k, v in headers
        if not k.lower().startswith("grip-") and k.lower() not in HOP_BY_HOP
        and (not expose or k.lower() in expose)]
    content_type = (_first(headers, "content-type") or "").split(";")[0].strip()
    if content_type == INSTRUCT_CONTENT_TYPE:
        if code != 200:
            raise GripError("application/grip-instruct content needs status 200, "
                            f"got {code}")
        inst = _from_json(body, inst)
    if inst.hold is not None:
        if not inst.channels:
            raise GripError("a hold needs at least one channel (Grip-Channel)")
        if inst.hold == "response":
            inst.timeout = max(MIN_TIMEOUT, inst.timeout)
    return inst


# -- writing the header form (origins) --------------------------------------------------------

def channel_header(channels: Iterable[Channel]) -> str:
    parts = []
    for c in channels:
        params = [c.name]
        if c.prev_id is not None:
            params.append(format_param("prev-id", c.prev_id))
        params.extend(format_param("filter", f) for f in c.filters)
        parts.append("; ".join(params))
    return ", ".join(parts)


def keep_alive_header(data: bytes, timeout: int, mode: str = "idle") -> str:
    text = escape_cstring(data)
    value = (f"{text}; format=cstring" if text
             else f"{base64.b64encode(data).decode()}; format=base64")
    value += f"; timeout={timeout}"
    if mode != "idle":
        value += f"; mode={mode}"
    return value


def set_meta_header(meta: Mapping[str, str]) -> str:
    return ", ".join(format_param(k, v) if v else f'{k}=""' for k, v in meta.items())


def link_header(uri: str, rel: str, timeout: int | None = None) -> str:
    value = f"<{uri}>; rel={rel}"
    if timeout is not None:
        value += f"; timeout={timeout}"
    return value


def hold_json(mode: HoldMode, channels: Iterable[Channel], response: Response,
              timeout: int | None = None, keep_alive: KeepAlive | None = None,
              meta: Mapping[str, str] | None = None) -> bytes:
    """The ``application/grip-instruct`` body for a hold (what gripcontrol's create_hold makes,
    plus filters, keep-alive and meta)."""
    hold: dict[str, Any] = {"mode": mode, "channels": [
        {"name": c.name, **({"prev-id": c.prev_id} if c.prev_id is not None else {}),
         **({"filters": list(c.filters)} if c.filters else {})} for c in channels]}
    if timeout is not None:
        hold["timeout"] = timeout
    if keep_alive is not None:
        hold["keep-alive"] = {"content-bin": base64.b64encode(keep_alive.content).decode(),
                              "timeout": keep_alive.timeout, "mode": keep_alive.mode}
    if meta:
        hold["meta"] = dict(meta)
    resp: dict[str, Any] = {"code": response.code, "headers": response.headers}
    if response.reason:
        resp["reason"] = response.reason
    try:
        resp["body"] = response.body.decode()
    except UnicodeDecodeError:
        resp["body-bin"] = base64.b64encode(response.body).decode()
    return msgspec.json.encode({"hold": hold, "response": resp})
