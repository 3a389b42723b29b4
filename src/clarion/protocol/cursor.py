"""The resume cursor of the unidirectional transports (SSE ``id``, stream and poll ``cursor``).

A cursor names a position in each channel's stream: ``offset:epoch:channel`` entries joined by
``|``, the channel percent-encoded so that it can hold ``:`` and ``|``. It is self-describing, so
a client that reconnects with a different set of channels still resumes the ones it had.
"""

from __future__ import annotations

from urllib.parse import quote, unquote

from clarion.errors import ClarionError

MAX_CURSOR_LENGTH = 8192


class CursorError(ClarionError):
    pass


def encode_entry(channel: str, offset: int, epoch: str) -> str:
    return f"{offset}:{epoch}:{quote(channel, safe='')}"


def encode(positions: dict[str, tuple[int, str]]) -> str:
    return "|".join(encode_entry(ch, off, ep) for ch, (off, ep) in positions.items())


def decode(cursor: str) -> dict[str, tuple[int, str]]:
    if len(cursor) > MAX_CURSOR_LENGTH:
        raise CursorError(f"cursor longer than {MAX_CURSOR_LENGTH} characters")
    out: dict[str, tuple[int, str]] = {}
    if not cursor:
        return out
    for entry in cursor.split("|"):
        parts = entry.split(":", 2)
        if len(parts) != 3 or not (parts[0].isascii() and parts[0].isdigit()) or not parts[2]:
            raise CursorError(f"malformed cursor entry {entry[:64]!r}")
        out[unquote(parts[2])] = (int(parts[0]), parts[1])
    return out
