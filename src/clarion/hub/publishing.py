"""Consecutive publications sent to the broker in one call: the publish commands of one
``/api/batch``, and ``POST /api/publish`` requests pipelined on one connection.

Through Redis every publication is a round trip; ``Broker.publish_many`` sends a run of them
in one pipeline, and their Pub/Sub messages arrive here together, so they also leave in one
write per subscriber. A run ends at the first command of another kind, so the batch's commands
still take effect in the order given.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec

from clarion.broker.base import ClientInfo, PublishOptions, PublishResult
from clarion.errors import BrokerError
from clarion.protocol import client as proto

if TYPE_CHECKING:
    from clarion.hub.app import Hub
    from clarion.hub.config import ChannelOptions, Config


def broker_request(config: Config, options: ChannelOptions, data: bytes, *,
                   tags: dict[str, str] | None = None, skip_history: bool = False,
                   idempotency_key: str = "", info: ClientInfo | None = None,
                   ) -> tuple[bytes, PublishOptions]:
    """What the hub sends the broker for a publication in a channel with ``options``: the data,
    made compact, and the publish options. ``Hub.publish``, the API's runs of publications and
    the Django app's direct path into Redis (``clarion.django.realtime``) all use it, so a
    publication is stored the same way whichever way it came in."""
    if b"\n" in data or b"\r" in data:
        # Frames batch messages by newline: data must be compact JSON.
        data = msgspec.json.encode(msgspec.json.decode(data))
    history = options.history_enabled and not skip_history
    history_size = options.history_size if history else 0
    history_ttl = float(options.history_ttl) if history else 0.0
    meta_ttl = config.seconds("history_meta_ttl")
    if info is None and not tags and not idempotency_key:
        return data, _plain_options(history_size, history_ttl, meta_ttl)
    return data, PublishOptions(
        history_size=history_size, history_ttl=history_ttl, info=info, tags=tags,
        idempotency_key=idempotency_key, history_meta_ttl=meta_ttl)


@functools.lru_cache(maxsize=256)
def _plain_options(history_size: int, history_ttl: float, meta_ttl: float) -> PublishOptions:
    # Most publications carry no tags, key or info, so their options are one of a few
    # values: shared (they are frozen) instead of built for each publication.
    return PublishOptions(history_size=history_size, history_ttl=history_ttl,
                          history_meta_ttl=meta_ttl)


def publish_options(hub: Hub, channel: str, data: bytes, *, tags: dict[str, str] | None,
                    skip_history: bool, idempotency_key: str) -> tuple[bytes, PublishOptions]:
    """``broker_request`` for ``channel`` under the hub's rules (raises ReplyError for a
    channel no rule allows)."""
    return broker_request(hub.config, hub.rules.options(channel), data, tags=tags,
                          skip_history=skip_history, idempotency_key=idempotency_key)


async def publish_many(
    hub: Hub, requests: Sequence[tuple[str, bytes, PublishOptions]],
) -> list[PublishResult | BrokerError]:
    """Every publication the hub makes goes through here (``Hub.publish``, ``PublishRun``, the
    GRIP publish API): ``Broker.publish_many``, one result or BrokerError per request. With a
    broker that delivers only subscribed channels (Redis), what the broker will not bring back
    to this node is handed to the fan-out's observer (``Fanout.observe_own``), so the GRIP
    proxy's hold window covers a publication made through this node on a channel that no one
    here was subscribed to yet: the origin's publish-then-hold."""
    observer_on = hub.fanout.observer is not None and not hub.broker.delivers_unsubscribed
    # The time the broker stamps is its own; this one is within the same call.
    now = time.time() if observer_on else 0.0
    try:
        results = await hub.broker.publish_many(requests)
    except BrokerError as exc:  # not started, or a backend that fails them all at once
        return [exc] * len(requests)
    if observer_on:
        hub.fanout.observe_own(requests, results, now)
    return results


class PublishRun:
    """Publish commands waiting to go out together; ``send`` writes each one's reply into
    the batch's reply list at the place the command held."""

    __slots__ = ("_hub", "_places", "_requests")

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self._requests: list[tuple[str, bytes, PublishOptions]] = []
        self._places: list[int] = []

    def add(self, place: int, channel: str, data: bytes, *, tags: dict[str, str] | None,
            skip_history: bool, idempotency_key: str) -> None:
        data, options = publish_options(self._hub, channel, data, tags=tags,
                                        skip_history=skip_history,
                                        idempotency_key=idempotency_key)
        self._requests.append((channel, data, options))
        self._places.append(place)

    async def results(self) -> list[tuple[int, PublishResult | BrokerError]]:
        """Publish what was added, in one broker call; each place with its result, or with
        the broker's error (logged here) when that publication did not happen."""
        if not self._requests:
            return []
        requests, self._requests = self._requests, []
        places, self._places = self._places, []
        results = await publish_many(self._hub, requests)
        for (channel, _, _), result in zip(requests, results, strict=True):
            if isinstance(result, BrokerError):
                self._hub.log.warning("API call failed: broker unavailable", method="publish",
                                      channel=channel, error=str(result))
        return list(zip(places, results, strict=True))

    async def send(self, replies: list[bytes], broker_error: bytes) -> None:
        """``results``, written into a batch's reply list in Centrifugo's batch shape."""
        for place, result in await self.results():
            replies[place] = (b'{"publish":' + result_json(result) + b"}"
                              if isinstance(result, PublishResult) else broker_error)


def result_json(result: PublishResult) -> bytes:
    """A publish result as the server API gives it: offset and epoch, or ``{}`` for a
    channel without history."""
    pos = result.position
    return proto.encode({"offset": pos.offset, "epoch": pos.epoch} if pos.epoch else {})
