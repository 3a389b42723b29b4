"""HTTP/1.1 to receivers: keep-alive pools, pinned addresses, no redirects, bounded everything.

Each new connection resolves the host through the :class:`AddressPolicy` and connects to one of
the addresses it vetted, never to a name, so what is checked is what is dialled (a DNS answer
that changes to 127.0.0.1 between two connections is refused on the second). The HTTP/1.1
exchange and the keep-alive pool are Clarion's one outbound layer (:mod:`clarion.outbound`,
httptools on asyncio); this module adds the address policy (as that layer's dialer), a bound
per host, and the webhook engine's errors. Only the first ``capture`` bytes of a body are kept,
and a body larger than ``max_read`` closes the connection instead of being read to the end.
Nothing is followed: a 3xx is handed back like any other status.

:class:`Transport` is the seam: the worker takes any object with ``send`` and ``aclose``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Protocol

from clarion import __version__, outbound
from clarion.errors import WebhookError
from clarion.webhooks.addresses import AddressPolicy, Target

USER_AGENT = f"Clarion-Webhooks/{__version__}"
CAPTURE = 20_000  # bytes of a response body kept per attempt (Svix keeps 20,000)
MAX_READ = 1 << 20  # bytes read before the connection is dropped instead
IDLE_TIMEOUT = 30.0


class ConnectError(WebhookError):
    """No connection could be made (refused, unreachable, TLS failed, name did not resolve)."""


class ExchangeError(WebhookError):
    """The connection broke or the receiver sent malformed HTTP."""


class ClosedBeforeAnswer(ExchangeError):
    """The receiver closed the connection before a status line arrived."""


@dataclass(slots=True)
class Request:
    target: Target
    headers: list[tuple[str, str]]
    body: bytes
    timeout: float


@dataclass(slots=True)
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    truncated: bool = False
    address: str = ""

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


class Transport(Protocol):
    async def send(self, request: Request) -> Response: ...

    async def aclose(self) -> None: ...


class PinnedTransport:
    """The default transport: one keep-alive pool per (scheme, host, port), each connection
    to an address the policy vetted."""

    def __init__(
        self,
        policy: AddressPolicy,
        *,
        max_connections_per_host: int = 64,
        capture: int = CAPTURE,
        max_read: int = MAX_READ,
        ssl_context: ssl.SSLContext | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.policy = policy
        self.capture = capture
        self.max_read = max_read
        self.ssl_context = ssl_context or ssl.create_default_context()
        self.idle_timeout = idle_timeout
        self.max_per_host = max_connections_per_host
        # No bound over all hosts and on idle connections: the worker's own concurrency is
        # the bound, and a host's slots are taken before a request's timeout starts (a
        # delivery is not failed for waiting behind its own host's other deliveries).
        self._client = outbound.Client(
            max_connections=None, max_keepalive=None, keepalive_expiry=idle_timeout,
            max_body=max_read, capture=capture, ssl_context=self.ssl_context,
            dialer=self._dial, user_agent=USER_AGENT)
        # A host's slots and how many requests hold or wait for them: dropped when that is
        # none (a worker delivers to ever new hosts; their semaphores must not pile up).
        self._slots: dict[tuple[str, str, int], tuple[asyncio.Semaphore, list[int]]] = {}
        self._closed = False

    async def send(self, request: Request) -> Response:
        if self._closed:
            raise WebhookError("transport is closed")
        t = request.target
        key = (t.scheme, t.host, t.port)
        entry = self._slots.get(key)
        if entry is None:
            entry = self._slots[key] = (asyncio.Semaphore(self.max_per_host), [0])
        slots, users = entry
        endpoint = outbound.Endpoint(t.scheme, t.host, t.port, t.target, t.host_header)
        users[0] += 1
        try:
            return await self._send(slots, endpoint, request)
        finally:
            users[0] -= 1
            if not users[0]:
                del self._slots[key]

    async def _send(self, slots: asyncio.Semaphore, endpoint: outbound.Endpoint,
                    request: Request) -> Response:
        async with slots:
            try:
                # A receiver that closed an idle keep-alive connection as it was reused
                # answered nothing: one fresh connection tries again (retry_stale).
                got = await self._client.request("POST", endpoint, headers=request.headers,
                                                 body=request.body, timeout=request.timeout)
            except outbound.RequestTimeout:
                raise TimeoutError(f"no answer within {request.timeout:g} s") from None
            except outbound.ClosedBeforeAnswer as exc:
                raise ClosedBeforeAnswer(
                    "receiver closed the connection before answering") from exc
            except outbound.ConnectError as exc:
                raise ConnectError(str(exc)) from exc
            except outbound.ClientClosed:
                raise WebhookError("transport is closed") from None
            except outbound.OutboundError as exc:  # broken, malformed, a head without end
                raise ExchangeError(f"receiver: {exc}") from exc
        return Response(got.status, got.headers, got.body, got.truncated, got.address)

    async def _dial(self, endpoint: outbound.Endpoint,
                    protocol_factory: Callable[[], asyncio.Protocol],
                    ssl_context: ssl.SSLContext | None
                    ) -> tuple[asyncio.BaseTransport, asyncio.Protocol]:
        t = Target(endpoint.scheme, endpoint.host, endpoint.port,  # type: ignore[arg-type]
                   endpoint.target, endpoint.host_header, _is_literal(endpoint.host))
        addresses = await self.policy.resolve(t)
        loop = asyncio.get_running_loop()
        last: OSError | None = None
        for address in addresses:
            try:
                return await loop.create_connection(
                    protocol_factory,
                    host=address,
                    port=t.port,
                    ssl=ssl_context,
                    server_hostname=t.host if ssl_context is not None and not t.literal
                    else None,
                )
            except OSError as exc:  # ssl.SSLError is an OSError too
                last = exc
        raise ConnectError(f"cannot connect to {t.host}:{t.port} ({', '.join(addresses)}): {last}")

    async def aclose(self) -> None:
        self._closed = True
        await self._client.aclose()


def _is_literal(host: str) -> bool:
    try:
        ip_address(host)
    except ValueError:
        return False
    return True
