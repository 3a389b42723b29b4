"""Publish formats and channels with gripcontrol's constructors and gripcontrol's JSON.

``publish()`` also takes gripcontrol's own format objects (anything with ``name()`` and
``export()``), so code that imports its formats from ``gripcontrol`` keeps working; gripcontrol
itself is never imported.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from clarion.protocol.grip.instruct import MAX_FILTERS
from clarion.protocol.grip.instruct import Channel as WireChannel

FORMAT_NAMES = frozenset({"http-response", "http-stream", "ws-message"})


@runtime_checkable
class Format(Protocol):
    """What ``publish()`` accepts as a format: gripcontrol's ``pubcontrol.Format`` surface."""

    def name(self) -> str: ...

    def export(self) -> Mapping[str, Any]: ...


class Channel:
    """gripcontrol's ``Channel``: a name, an optional ``prev_id`` and a ``filters`` list."""

    __slots__ = ("filters", "name", "prev_id")

    def __init__(self, name: str, prev_id: str | None = None,
                 filters: Iterable[str] | None = None) -> None:
        self.name = name
        self.prev_id = prev_id
        self.filters: list[str] = list(filters) if filters is not None else []

    def __repr__(self) -> str:
        return f"Channel({self.name!r}, prev_id={self.prev_id!r}, filters={self.filters!r})"


def _text_or_b64(value: str | bytes) -> tuple[bool, str]:
    """(True, text) when ``value`` is text or UTF-8, else (False, base64) — gripcontrol's rule."""
    if isinstance(value, str):
        return True, value
    try:
        return True, value.decode("utf-8")
    except UnicodeDecodeError:
        return False, base64.b64encode(value).decode("ascii")


class HttpStreamFormat:
    """Content for HTTP streaming clients; ``close=True`` (or ``action="close"``) ends their
    streams instead."""

    def __init__(self, content: str | bytes | None = None, close: bool = False,
                 content_filters: Sequence[str] | None = None,
                 action: str | None = None) -> None:
        if close and action and action != "close":
            raise ValueError("conflicting action and close arguments provided")
        self.content = content
        self.close = close or action == "close"
        self.content_filters = list(content_filters) if content_filters is not None else None
        self.action = "close" if close and not action else action
        if not self.close and not self.action and self.content is None:
            raise ValueError("content not set")

    def name(self) -> str:
        return "http-stream"

    def export(self) -> dict[str, Any]:
        out = _start(self.action, self.content_filters)
        if "action" in out:
            return out
        if self.content is None:
            raise ValueError("content not set")
        is_text, value = _text_or_b64(self.content)
        out["content" if is_text else "content-bin"] = value
        return out


class HttpResponseFormat:
    """A whole response for long-polling clients (their held request is answered with it)."""

    def __init__(self, code: int | None = None, reason: str | None = None,
                 headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
                 body: str | bytes | None = None,
                 content_filters: Sequence[str] | None = None,
                 action: str | None = None) -> None:
        self.code = code
        self.reason = reason
        self.headers = headers
        self.body = body
        self.content_filters = list(content_filters) if content_filters is not None else None
        self.action = action

    def name(self) -> str:
        return "http-response"

    def export(self) -> dict[str, Any]:
        out = _start(self.action, self.content_filters)
        if "action" in out:
            return out
        if self.code is not None:
            out["code"] = self.code
        if self.reason:
            out["reason"] = self.reason
        if self.headers:
            out["headers"] = (dict(self.headers) if isinstance(self.headers, Mapping)
                              else [list(pair) for pair in self.headers])
        if self.body is None:
            out["body"] = ""
        else:
            is_text, value = _text_or_b64(self.body)
            out["body" if is_text else "body-bin"] = value
        return out


class WebSocketMessageFormat:
    """A message for WebSocket clients: text, or binary with ``binary=True``;
    ``action="close"`` (with ``code``, ``reason``) closes their connections instead."""

    def __init__(self, content: str | bytes | None = None, binary: bool = False,
                 action: str | None = None, code: int | None = None,
                 reason: str | None = None) -> None:
        self.content = content
        self.binary = binary
        self.action = action
        self.code = code
        self.reason = reason

    def name(self) -> str:
        return "ws-message"

    def export(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.action and self.action != "send":
            out["action"] = self.action
            if self.action == "close":
                if self.code is not None:
                    out["code"] = self.code
                if self.reason:
                    out["reason"] = self.reason
            return out
        if self.content is None:
            raise ValueError("content not set")
        if self.binary:
            data = self.content.encode() if isinstance(self.content, str) else self.content
            out["content-bin"] = base64.b64encode(data).decode("ascii")
        else:
            out["content"] = (self.content if isinstance(self.content, str)
                              else self.content.decode("utf-8"))
        return out


def _start(action: str | None, content_filters: list[str] | None) -> dict[str, Any]:
    """What every format's export begins with: an action other than send says it all."""
    if action and action != "send":
        return {"action": action}
    return {} if content_filters is None else {"content-filters": list(content_filters)}


def _jsonable(value: Any) -> Any:
    """gripcontrol's exports hold ``bytes`` (its base64 is bytes): make them text, as pubcontrol's
    ``_ensure_unicode`` does before sending."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, Mapping):
        return {str(_jsonable(k)): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def export_formats(formats: Any) -> dict[str, dict[str, Any]]:
    """``{format name: exported format}`` for one format or a list of them (ours or
    gripcontrol's); two formats of the same kind are an error, as in pubcontrol."""
    items = [formats] if isinstance(formats, Format) else formats
    if not isinstance(items, list | tuple) or not items:
        raise TypeError("formats must be a format object (HttpStreamFormat, "
                        "HttpResponseFormat, WebSocketMessageFormat) or a non-empty list of "
                        f"them, not {type(formats).__name__}")
    out: dict[str, dict[str, Any]] = {}
    for fmt in items:
        if not isinstance(fmt, Format):
            raise TypeError(f"not a publish format: {fmt!r} (needs name() and export())")
        name = fmt.name()
        if name not in FORMAT_NAMES:
            raise ValueError(f"unknown format {name!r}; GRIP proxies take "
                             f"{', '.join(sorted(FORMAT_NAMES))}")
        if name in out:
            raise ValueError(f"more than one {name} format given")
        exported = _jsonable(fmt.export())
        if not isinstance(exported, dict):
            raise TypeError(f"{type(fmt).__name__}.export() must return a dict")
        out[name] = exported
    return out


def wire_channels(channels: Any, prefix: str = "") -> list[WireChannel]:
    """A channel name, a ``Channel`` (ours or gripcontrol's), or a list of them, as the
    protocol's channels with ``prefix`` prepended. Filter names pass through unchecked (newer
    proxies know more than the five classic ones); more than five is refused here, in the view,
    rather than by the proxy later."""
    if isinstance(channels, str) or hasattr(channels, "name"):
        channels = [channels]
    out: list[WireChannel] = []
    for c in channels:
        if isinstance(c, str):
            name, prev_id, filters = c, None, ()
        else:
            name = c.name
            prev_id = getattr(c, "prev_id", None)
            filters = tuple(getattr(c, "filters", None) or ())
        if not isinstance(name, str) or not name:
            raise ValueError(f"bad channel name {name!r}")
        if len(filters) > MAX_FILTERS:
            raise ValueError(f"channel {name!r}: at most {MAX_FILTERS} filters")
        out.append(WireChannel(prefix + name, None if prev_id is None else str(prev_id),
                               filters))
    if not out:
        raise ValueError("no channels given")
    return out
