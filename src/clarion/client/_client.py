"""``Client`` and ``AsyncClient``: the hub's server API over httpx, written out side by side
(as httpx writes its own two clients) so that each reads on its own; what to send and how to
read the answer live once, in :mod:`clarion.client.commands`."""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, TypeVar

import httpx
import msgspec

from clarion.client import _edge, commands
from clarion.client._results import (
    ClientInfo,
    EventResult,
    HistoryResult,
    NodeInfo,
    PresenceStats,
    PublishResult,
    StreamPosition,
    Ticket,
)
from clarion.client.commands import Command
from clarion.errors import ConfigError, HubError, HubReplyError

__all__ = ["AsyncClient", "Client"]

T = TypeVar("T")


def _parsed(command: Command[T], raw: bytes) -> T:
    try:
        return command.parse(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise _edge.malformed(command.method, exc) from exc


def _batch_body(items: list[Command[Any]]) -> bytes:
    if not items:
        raise ValueError("batch: commands must not be empty")
    for item in items:
        if not isinstance(item, Command):
            raise TypeError(f"batch: each command must be made by clarion.client.commands, "
                            f"not a {type(item).__name__}")
    return (b'{"commands":[' + b",".join(b'{"' + c.method.encode() + b'":' + c.body + b"}"
                                         for c in items) + b"]}")


def _batch_results(items: list[Command[Any]], response: httpx.Response) -> list[Any]:
    replies = _edge.batch_replies(response)
    if len(replies) != len(items):
        raise HubError(f"batch: {len(items)} commands sent, {len(replies)} replies received")
    out: list[Any] = []
    for item, reply in zip(items, replies, strict=True):
        if "error" in reply:
            out.append(_edge.reply_error(reply["error"]))
        elif item.method in reply:
            try:
                out.append(_parsed(item, bytes(reply[item.method])))
            except HubReplyError as exc:  # broadcast: a channel's error, kept in its place
                out.append(exc)
        else:
            raise HubError(f"batch: the reply to {item.method} names {sorted(reply)}")
    return out


class _Base:
    def __init__(self, url: str, api_key: str | None, timeout: float,
                 headers: Mapping[str, str] | None) -> None:
        self.url = _edge.api_base(url)
        self.timeout = _edge.check_timeout(timeout)
        self._headers = _edge.headers(api_key, headers)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url} timeout={self.timeout:g}s>"


class Client(_Base):
    """The hub's server API, synchronously: ``Client("http://127.0.0.1:8000", api_key=…)``.

    One client keeps a pool of keep-alive connections: make one per process and share it
    (it is thread-safe, as ``httpx.Client`` is). Every call is bounded by ``timeout`` seconds
    for connecting, for sending and for each wait for the answer, and raises
    ``HubUnavailable`` past it. Nothing is retried. ``transport`` replaces httpx's own (a
    proxy, ``httpx.MockTransport`` in tests); ``headers`` are sent with every call;
    ``verify`` says how an ``https://`` hub's certificate is checked (:func:`tls_verification`).
    """

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 5.0,
                 transport: httpx.BaseTransport | None = None,
                 headers: Mapping[str, str] | None = None,
                 verify: bool | str | ssl.SSLContext = True) -> None:
        super().__init__(url, api_key, timeout, headers)
        # trust_env=False: the hub is on your own network; HTTP(S)_PROXY set for outbound
        # traffic would send these calls astray. Pass a transport to use a proxy.
        self._http = httpx.Client(headers=self._headers, timeout=self.timeout,
                                  transport=transport, trust_env=False,
                                  verify=tls_verification(verify))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled connections; the client cannot be used afterwards."""
        self._http.close()

    def _post(self, method: str, body: bytes) -> httpx.Response:
        url = f"{self.url}/{method}"
        try:
            return self._http.post(url, content=body)
        except httpx.TransportError as exc:
            raise _edge.transport_failure(exc, method, url, self.timeout) from exc

    def run(self, command: Command[T]) -> T:
        """Send one command (from :mod:`clarion.client.commands`) and return its result."""
        response = self._post(command.method, command.body)
        return _parsed(command, _edge.result(response, command.method))

    def batch(self, commands: Iterable[Command[Any]]) -> list[Any]:
        """Send several commands in one request; the hub runs them in order (consecutive
        publishes as one broker call). One result per command, in order: its value, or the
        ``HubReplyError`` it met (returned, not raised, as the others still ran)."""
        items = list(commands)
        return _batch_results(items, self._post("batch", _batch_body(items)))

    def publish(self, channel: str, data: Any, *, idempotency_key: str | None = None,
                skip_history: bool = False,
                tags: Mapping[str, str] | None = None) -> PublishResult:
        return self.run(commands.publish(channel, data, idempotency_key=idempotency_key,
                                         skip_history=skip_history, tags=tags))

    def broadcast(self, channels: Iterable[str], data: Any, *,
                  idempotency_key: str | None = None, skip_history: bool = False,
                  tags: Mapping[str, str] | None = None) -> list[PublishResult]:
        return self.run(commands.broadcast(channels, data, idempotency_key=idempotency_key,
                                           skip_history=skip_history, tags=tags))

    def subscribe(self, user: str, channel: str, *, info: Any = None, data: Any = None,
                  client: str | None = None, session: str | None = None,
                  recover_since: StreamPosition | None = None,
                  override: Mapping[str, Any] | None = None) -> None:
        self.run(commands.subscribe(user, channel, info=info, data=data, client=client,
                                    session=session, recover_since=recover_since,
                                    override=override))

    def unsubscribe(self, user: str, channel: str, *, client: str | None = None,
                    session: str | None = None) -> None:
        self.run(commands.unsubscribe(user, channel, client=client, session=session))

    def disconnect(self, user: str, *, code: int | None = None, reason: str | None = None,
                   client: str | None = None, session: str | None = None,
                   whitelist: Iterable[str] = ()) -> None:
        self.run(commands.disconnect(user, code=code, reason=reason, client=client,
                                     session=session, whitelist=whitelist))

    def refresh(self, user: str, *, client: str | None = None, session: str | None = None,
                expired: bool = False, expire_at: int | None = None) -> None:
        self.run(commands.refresh(user, client=client, session=session, expired=expired,
                                  expire_at=expire_at))

    def presence(self, channel: str) -> dict[str, ClientInfo]:
        return self.run(commands.presence(channel))

    def presence_stats(self, channel: str) -> PresenceStats:
        return self.run(commands.presence_stats(channel))

    def history(self, channel: str, *, limit: int | None = None,
                since: StreamPosition | None = None, reverse: bool = False) -> HistoryResult:
        return self.run(commands.history(channel, limit=limit, since=since, reverse=reverse))

    def history_remove(self, channel: str) -> None:
        self.run(commands.history_remove(channel))

    def channels(self, pattern: str | None = None) -> dict[str, int]:
        return self.run(commands.channels(pattern))

    def info(self) -> list[NodeInfo]:
        return self.run(commands.info())

    def ticket(self, user: str, *, info: Any = None, channels: Iterable[str] = (),
               ttl: float | None = None) -> Ticket:
        return self.run(commands.ticket(user, info=info, channels=channels, ttl=ttl))

    def event(self, type: str, data: Any, *, channel: str | None = None,
              idempotency_key: str | None = None) -> EventResult:
        return self.run(commands.event(type, data, channel=channel,
                                       idempotency_key=idempotency_key))


def tls_verification(verify: bool | str | ssl.SSLContext) -> bool | ssl.SSLContext:
    """How an ``https://`` hub's certificate is checked: ``True``, against the usual public
    CAs; a path, against that CA bundle (a private CA; ``SSL_CERT_FILE`` is not read, as no
    environment setting is); an ``SSLContext``, as it says; ``False``, not at all (tests)."""
    if isinstance(verify, str):
        try:
            return ssl.create_default_context(cafile=verify)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"clarion.client: cannot read the CA bundle {verify!r}: "
                              f"{exc}") from None
    return verify


class AsyncClient(_Base):
    """:class:`Client` for asyncio: the same methods, awaited; ``aclose()`` and
    ``async with``. Share one per event loop."""

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 5.0,
                 transport: httpx.AsyncBaseTransport | None = None,
                 headers: Mapping[str, str] | None = None,
                 verify: bool | str | ssl.SSLContext = True) -> None:
        super().__init__(url, api_key, timeout, headers)
        self._http = httpx.AsyncClient(headers=self._headers, timeout=self.timeout,
                                       transport=transport, trust_env=False,
                                       verify=tls_verification(verify))

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the pooled connections; the client cannot be used afterwards."""
        await self._http.aclose()

    async def _post(self, method: str, body: bytes) -> httpx.Response:
        url = f"{self.url}/{method}"
        try:
            return await self._http.post(url, content=body)
        except httpx.TransportError as exc:
            raise _edge.transport_failure(exc, method, url, self.timeout) from exc

    async def run(self, command: Command[T]) -> T:
        """Send one command (from :mod:`clarion.client.commands`) and return its result."""
        response = await self._post(command.method, command.body)
        return _parsed(command, _edge.result(response, command.method))

    async def batch(self, commands: Iterable[Command[Any]]) -> list[Any]:
        """As :meth:`Client.batch`."""
        items = list(commands)
        return _batch_results(items, await self._post("batch", _batch_body(items)))

    async def publish(self, channel: str, data: Any, *, idempotency_key: str | None = None,
                      skip_history: bool = False,
                      tags: Mapping[str, str] | None = None) -> PublishResult:
        return await self.run(commands.publish(channel, data, idempotency_key=idempotency_key,
                                               skip_history=skip_history, tags=tags))

    async def broadcast(self, channels: Iterable[str], data: Any, *,
                        idempotency_key: str | None = None, skip_history: bool = False,
                        tags: Mapping[str, str] | None = None) -> list[PublishResult]:
        return await self.run(commands.broadcast(
            channels, data, idempotency_key=idempotency_key, skip_history=skip_history,
            tags=tags))

    async def subscribe(self, user: str, channel: str, *, info: Any = None, data: Any = None,
                        client: str | None = None, session: str | None = None,
                        recover_since: StreamPosition | None = None,
                        override: Mapping[str, Any] | None = None) -> None:
        await self.run(commands.subscribe(user, channel, info=info, data=data, client=client,
                                          session=session, recover_since=recover_since,
                                          override=override))

    async def unsubscribe(self, user: str, channel: str, *, client: str | None = None,
                          session: str | None = None) -> None:
        await self.run(commands.unsubscribe(user, channel, client=client, session=session))

    async def disconnect(self, user: str, *, code: int | None = None,
                         reason: str | None = None, client: str | None = None,
                         session: str | None = None, whitelist: Iterable[str] = ()) -> None:
        await self.run(commands.disconnect(user, code=code, reason=reason, client=client,
                                           session=session, whitelist=whitelist))

    async def refresh(self, user: str, *, client: str | None = None,
                      session: str | None = None, expired: bool = False,
                      expire_at: int | None = None) -> None:
        await self.run(commands.refresh(user, client=client, session=session, expired=expired,
                                        expire_at=expire_at))

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        return await self.run(commands.presence(channel))

    async def presence_stats(self, channel: str) -> PresenceStats:
        return await self.run(commands.presence_stats(channel))

    async def history(self, channel: str, *, limit: int | None = None,
                      since: StreamPosition | None = None,
                      reverse: bool = False) -> HistoryResult:
        return await self.run(commands.history(channel, limit=limit, since=since,
                                               reverse=reverse))

    async def history_remove(self, channel: str) -> None:
        await self.run(commands.history_remove(channel))

    async def channels(self, pattern: str | None = None) -> dict[str, int]:
        return await self.run(commands.channels(pattern))

    async def info(self) -> list[NodeInfo]:
        return await self.run(commands.info())

    async def ticket(self, user: str, *, info: Any = None, channels: Iterable[str] = (),
                     ttl: float | None = None) -> Ticket:
        return await self.run(commands.ticket(user, info=info, channels=channels, ttl=ttl))

    async def event(self, type: str, data: Any, *, channel: str | None = None,
                    idempotency_key: str | None = None) -> EventResult:
        return await self.run(commands.event(type, data, channel=channel,
                                             idempotency_key=idempotency_key))
