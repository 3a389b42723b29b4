"""The last publications per channel, kept for holds that are being set up.

Between the moment the proxy forwards a request and the moment the origin's hold instruction
comes back, the origin may publish on the channel it is about to hold. Pushpin loses such a
message (or asks the origin again when ids say one is missing); here the hold is given every
publication it could have missed: with ``prev-id``, exactly those after the item with that id;
without, those made since the request went to the origin.
"""

from __future__ import annotations

import itertools
import time
from collections import deque

from clarion.hub.push import EncodedPush

PER_CHANNEL = 64
MAX_AGE = 60.0  # Pushpin's id_cache_ttl
MAX_CHANNELS = 10_000  # bounds memory when many channels carry native traffic


class Recent:
    __slots__ = ("_channels", "_counter", "seq")

    def __init__(self) -> None:
        self._counter = itertools.count(1)
        self.seq = 0
        self._channels: dict[str, deque[tuple[int, float, EncodedPush]]] = {}

    def add(self, channel: str, enc: EncodedPush) -> None:
        self.seq = seq = next(self._counter)
        entries = self._channels.get(channel)
        if entries is None:
            if len(self._channels) >= MAX_CHANNELS:
                # The channel that appeared first goes: its entries are the likeliest stale.
                del self._channels[next(iter(self._channels))]
            entries = self._channels[channel] = deque(maxlen=PER_CHANNEL)
        entries.append((seq, time.monotonic(), enc))

    def since(self, channel: str, seq: int, prev_id: str | None) -> list[tuple[int, EncodedPush]]:
        """What a hold on ``channel`` may have missed, in publication order."""
        entries = self._channels.get(channel)
        if not entries:
            return []
        if prev_id is not None:
            for i in range(len(entries) - 1, -1, -1):
                if entries[i][2].grip.id == prev_id:
                    return [(s, e) for s, _, e in list(entries)[i + 1:]]
        return [(s, e) for s, _, e in entries if s > seq]

    def sweep(self) -> None:
        cutoff = time.monotonic() - MAX_AGE
        for channel in list(self._channels):
            entries = self._channels[channel]
            while entries and entries[0][1] < cutoff:
                entries.popleft()
            if not entries:
                del self._channels[channel]
