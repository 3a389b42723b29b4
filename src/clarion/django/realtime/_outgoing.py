"""A publication on its way to the hub, checked and encoded when it is made.

Encoding happens in the caller's code (the view), not after commit: data that is not JSON
fails there with a ``TypeError``, instead of in a commit hook where nobody sees it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec

_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Outgoing:
    channels: tuple[str, ...]
    data: bytes  # compact JSON
    idempotency_key: str | None
    broadcast: bool  # one broadcast command (a result per channel) rather than one publish


def outgoing(channels: str | Iterable[str], data: Any, idempotency_key: str | None, *,
             broadcast: bool) -> Outgoing:
    what = "broadcast" if broadcast else "publish"
    if broadcast:
        if isinstance(channels, str):
            raise TypeError("broadcast: channels must be a list of channel names, not one str")
        names = tuple(channels)
        if not names:
            raise ValueError("broadcast: channels must not be empty")
    else:
        names = (channels,) if isinstance(channels, str) else ()
        if not names:
            raise TypeError(f"publish: channel must be a str, not {type(channels).__name__}")
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{what}: a channel must be a non-empty str, not {name!r}")
    if idempotency_key is not None and (not isinstance(idempotency_key, str)
                                        or not idempotency_key):
        raise ValueError(f"{what}: idempotency_key must be a non-empty str or None")
    try:
        encoded = _encoder.encode(data)
    except (TypeError, msgspec.EncodeError) as exc:
        raise TypeError(f"{what}: data cannot be sent as JSON: {exc}") from exc
    return Outgoing(names, encoded, idempotency_key, broadcast)
