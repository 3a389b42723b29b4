"""Server-Sent Events framing (WHATWG HTML, "server-sent events")."""

from __future__ import annotations

KEEPALIVE = b": ping\n\n"


def event(data: bytes, id: str | None = None, name: str | None = None) -> bytes:
    """One event. ``data`` must be a single line: the hub only sends compact JSON."""
    head = b""
    if id is not None:
        head += b"id: " + id.encode() + b"\n"
    if name is not None:
        head += b"event: " + name.encode() + b"\n"
    return head + b"data: " + data + b"\n\n"


def retry(milliseconds: int) -> bytes:
    return b"retry: %d\n\n" % milliseconds
