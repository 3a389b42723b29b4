"""The broker contract. Every method is a coroutine; a backend raises BrokerError on failure.

Delivery: a backend calls its handler's ``on_publication`` once per publication for every
channel the hub has subscribed to on this node, in offset order per channel, including
publications made on this node. ``on_join``/``on_leave`` likewise. Whether it also delivers
channels this node is not subscribed to is :attr:`Broker.delivers_unsubscribed`; a backend that
does not must stop delivering a channel as soon as ``unsubscribe`` was called (messages still
in flight are dropped), so that the hub knows exactly which of its own publications will come
back to it.

Optional hook: a handler may also define ``on_resubscribed(channels: list[str]) -> None``
(see :class:`ResubscribeHook`). A backend whose fan-out runs over a connection that can drop
(Redis Pub/Sub) calls it after it reconnected and resubscribed ``channels``, the channels this
node was subscribed to. Publications made while the link was down were not delivered, so the
hub should make those channels' subscribers catch up from history (or tell them that their
position is gone when the epoch changed). Backends look the method up with ``getattr``, so a
handler without it keeps working; the memory backend never calls it (it cannot lose a link).

Control messages (node to node): :meth:`Broker.publish_control` sends opaque bytes to the hub
nodes that share the broker (every hub process on the same Redis, shards, Cluster or
Sentinel), and each node's handler gets them through its optional
``on_control(data: bytes) -> None`` (see :class:`ControlHook`), also looked up with
``getattr``. A broadcast reaches **every node, the sender included**, so a hub can apply a
server-API command (disconnect a user, unsubscribe, refresh) in one code path for local and
remote connections. ``to=node_id`` reaches that one node only (the sender too when it names
itself): a node answering a request (``info``, ``channels``) sends its reply to the asker's
:attr:`Broker.node_id`, which the asker put in the request. Delivery is at most once, like
Pub/Sub: a node whose link is down misses what is sent meanwhile (it gets ``on_resubscribed``
when the link is back), and a message to a node that does not exist is dropped. Messages from
one sender arrive in the order that sender's ``publish_control`` calls returned.
"""

from __future__ import annotations

import abc
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from clarion.errors import BrokerError


@dataclass(frozen=True, slots=True)
class StreamPosition:
    offset: int
    epoch: str


@dataclass(frozen=True, slots=True)
class ClientInfo:
    client: str
    user: str
    conn_info: bytes | None = None  # raw JSON
    chan_info: bytes | None = None  # raw JSON


@dataclass(frozen=True, slots=True)
class Publication:
    offset: int
    data: bytes  # raw JSON
    info: ClientInfo | None = None
    tags: dict[str, str] | None = None
    time: float = 0.0  # when it was published (time.time()), for latency metrics


@dataclass(frozen=True, slots=True)
class PublishOptions:
    history_size: int = 0
    history_ttl: float = 0.0
    info: ClientInfo | None = None
    tags: dict[str, str] | None = None
    idempotency_key: str = ""
    idempotent_result_ttl: float = 300.0
    # How long a stream's epoch and top offset outlive its publications.
    history_meta_ttl: float = 30 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class PublishResult:
    position: StreamPosition
    suppressed: bool = False  # True when an idempotency key matched an earlier publication


@dataclass(frozen=True, slots=True)
class HistoryResult:
    publications: list[Publication]
    position: StreamPosition  # the stream's current top


class BrokerEventHandler(Protocol):
    def on_publication(self, channel: str, pub: Publication, epoch: str) -> None: ...

    def on_join(self, channel: str, info: ClientInfo) -> None: ...

    def on_leave(self, channel: str, info: ClientInfo) -> None: ...


class ResubscribeHook(Protocol):
    """The optional part of a handler: told when a lost fan-out link was restored."""

    def on_resubscribed(self, channels: list[str]) -> None: ...


class ControlHook(Protocol):
    """The optional part of a handler: a control message from a node (maybe this one)."""

    def on_control(self, data: bytes) -> None: ...


class Broker(abc.ABC):
    _node_id: str | None = None

    #: True when ``on_publication`` gets every publication, on channels this node is not
    #: subscribed to as well (the memory backend: one process, one node). False (the contract's
    #: minimum, and the Redis backends') when only subscribed channels are delivered: the hub
    #: then hands its own publications on unsubscribed channels to the GRIP proxy's
    #: recent-publications buffer itself (``clarion.hub.publishing.publish_many``), which a
    #: hold that is being set up reads.
    delivers_unsubscribed: bool = False

    @property
    def node_id(self) -> str:
        """This node's id among the nodes sharing the broker: the address of
        ``publish_control(data, to=…)``. Stable for the broker's life; a backend may override
        it (the Redis backends take a ``node_id`` option)."""
        if self._node_id is None:
            self._node_id = secrets.token_hex(8)
        return self._node_id

    @abc.abstractmethod
    async def publish_control(self, data: bytes, *, to: str | None = None) -> None:
        """Send ``data`` to every node's ``on_control``, this node's included; with ``to``,
        to the node whose :attr:`node_id` it is, only. Raises BrokerError when it could not
        be sent; see the module docstring for what delivery means."""

    @abc.abstractmethod
    async def start(self, handler: BrokerEventHandler) -> None:
        """Connect and begin delivering events to ``handler``."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop delivering and release connections. Safe to call twice."""

    @abc.abstractmethod
    async def subscribe(self, channel: str) -> None:
        """This node wants publications of ``channel``."""

    @abc.abstractmethod
    async def unsubscribe(self, channel: str) -> None: ...

    @abc.abstractmethod
    async def publish(self, channel: str, data: bytes, options: PublishOptions) -> PublishResult:
        """Append to the channel's stream when history is on (size and ttl > 0), then deliver.

        Offsets start at 1 and grow by one per publication of a stream. A stream whose
        publications and metadata are gone starts again at 1 under a new epoch."""

    async def publish_many(
        self, requests: Sequence[tuple[str, bytes, PublishOptions]],
    ) -> list[PublishResult | BrokerError]:
        """Publish ``(channel, data, options)`` requests, in order: one result per request,
        or the BrokerError that request met (the others still go out, as each command of the
        server API's batch answers for itself). Publications of one channel are kept and
        delivered in the order given.

        This default publishes one after another, so a backend without an override keeps
        working; a backend with round trips overrides it to save them (the Redis ones send
        one pipeline)."""
        results: list[PublishResult | BrokerError] = []
        for channel, data, options in requests:
            try:
                results.append(await self.publish(channel, data, options))
            except BrokerError as exc:
                results.append(exc)
        return results

    @abc.abstractmethod
    async def publish_join(self, channel: str, info: ClientInfo) -> None: ...

    @abc.abstractmethod
    async def publish_leave(self, channel: str, info: ClientInfo) -> None: ...

    @abc.abstractmethod
    async def history(
        self,
        channel: str,
        *,
        since: StreamPosition | None = None,
        limit: int = 0,
        reverse: bool = False,
        meta_ttl: float = 30 * 24 * 3600.0,
    ) -> HistoryResult:
        """Publications of the stream, oldest first (newest first when ``reverse``).

        ``since``: only publications with a greater offset (a smaller one when ``reverse``, as
        Centrifuge pages backwards), when its epoch is current (else none: the position is
        gone). Epochs contain only ``[0-9a-zA-Z_-]`` (they appear in resume cursors).
        ``limit``: 0 means none are returned (only the position),
        -1 means all. The position is always the stream's current top; a channel that has no
        stream gets one (with a fresh epoch) so that later publications continue from it."""

    @abc.abstractmethod
    async def remove_history(self, channel: str) -> None: ...

    @abc.abstractmethod
    async def add_presence(self, channel: str, info: ClientInfo, ttl: float) -> None:
        """Add or refresh a client's presence. Entries not refreshed within ttl expire."""

    @abc.abstractmethod
    async def remove_presence(self, channel: str, client: str) -> None: ...

    @abc.abstractmethod
    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        """Clients present in the channel, by client id."""

    @abc.abstractmethod
    async def presence_stats(self, channel: str) -> tuple[int, int]:
        """(number of clients, number of distinct users)."""

    @abc.abstractmethod
    async def store_ticket(self, ticket: str, payload: bytes, ttl: float) -> None: ...

    @abc.abstractmethod
    async def consume_ticket(self, ticket: str) -> bytes | None:
        """Return and delete the ticket's payload in one atomic step; None if absent/expired."""
