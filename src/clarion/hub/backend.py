"""The hub's HTTP client for the app's backend: connect, refresh, subscribe, publish,
sub_refresh and rpc proxies (docs/topics/proxies.md).

One pooled keep-alive HTTP/1.1 client per hub (``clarion.outbound``: httptools on asyncio, a
fraction of httpx's CPU per call), closed by ``Hub.shutdown``. A call is bounded by its proxy's
timeout per attempt; the idempotent ones are retried a few times with a short backoff. Whatever
goes wrong on the way (connection refused, a timeout, a status other than 200, a body that is
not a valid answer) becomes one ``BackendUnavailable``: the session turns it into the client
protocol's error, and nothing else in the hub waits for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

from clarion import outbound
from clarion.errors import ClarionError, ConfigError
from clarion.protocol import proxy as pp

if TYPE_CHECKING:
    from clarion.hub.config import Config
    from clarion.hub.logs import Logger
    from clarion.hub.metrics import HubMetrics

KINDS = ("connect", "refresh", "subscribe", "publish", "sub_refresh", "rpc")
# A publish or an rpc may have done something in the backend before it failed: never twice.
IDEMPOTENT = frozenset({"connect", "refresh", "subscribe", "sub_refresh"})
MAX_ANSWER_BYTES = outbound.MAX_BODY
RETRY_DELAY = 0.1  # doubled after each failed attempt
# Pool bounds: a busy hub makes many concurrent calls, and a backend that stalls must not
# collect an unbounded number of sockets; one waiting for a free connection counts against
# the call's timeout like any other wait.
MAX_CONNECTIONS = outbound.MAX_CONNECTIONS
MAX_KEEPALIVE = outbound.MAX_KEEPALIVE
KEEPALIVE_EXPIRY = outbound.KEEPALIVE_EXPIRY
_JSON = ("Content-Type", "application/json")

_RESULTS: dict[str, type[pp.Result]] = {
    "connect": pp.ConnectResult,
    "refresh": pp.RefreshResult,
    "subscribe": pp.SubscribeResult,
    "publish": pp.PublishResult,
    "sub_refresh": pp.RefreshResult,
    "rpc": pp.RPCResult,
}


class BackendUnavailable(ClarionError):
    """The backend did not give a valid answer (down, slow, an error status, garbage)."""


class _Retryable(Exception):
    """A failed attempt worth another (connection error, timeout, 5xx)."""


def safe_endpoint(url: str) -> str:
    """The endpoint as logs show it: no credentials, no query string."""
    return outbound.safe_url(url)


class Backend:
    """The configured proxy endpoints and the one HTTP client that calls them."""

    def __init__(self, config: Config, metrics: HubMetrics, log: Logger,
                 client: outbound.Client | None = None) -> None:
        self.metrics = metrics
        self.log = log
        self.retries = config.proxy_retries
        # kind -> (parsed endpoint, timeout, endpoint as logged): URLs are parsed once here.
        self.endpoints: dict[str, tuple[outbound.Endpoint, float, str]] = {}
        for kind in KINDS:
            url = getattr(config, f"proxy_{kind}_endpoint")
            if url:
                try:
                    endpoint = outbound.Endpoint.parse(url)
                except ValueError as exc:  # what the config's scheme-and-host check let by
                    raise ConfigError(f"proxy_{kind}_endpoint: {exc}") from None
                self.endpoints[kind] = (endpoint,
                                        config.seconds(f"proxy_{kind}_timeout"),
                                        safe_endpoint(url))
        self.static_headers = list(config.proxy_static_http_headers.items())
        self._static_names = frozenset(name.lower() for name, _ in self.static_headers)
        # The endpoints are the operator's: no proxy from the environment, no redirects (a
        # redirect would carry the user's cookies somewhere else); clarion.outbound does
        # neither.
        self.client = client or outbound.Client(
            max_connections=MAX_CONNECTIONS, max_keepalive=MAX_KEEPALIVE,
            keepalive_expiry=KEEPALIVE_EXPIRY, max_body=MAX_ANSWER_BYTES)

    @classmethod
    def from_config(cls, config: Config, metrics: HubMetrics, log: Logger) -> Backend | None:
        """A backend client when any proxy is configured, else None (nothing to pool)."""
        if not any(getattr(config, f"proxy_{kind}_endpoint") for kind in KINDS):
            return None
        return cls(config, metrics, log)

    def has(self, kind: str) -> bool:
        return kind in self.endpoints

    async def close(self) -> None:
        await self.client.aclose()

    async def call(self, kind: str, request: pp.ProxyRequest,
                   headers: Sequence[tuple[str, str]] = ()) -> pp.Answer:
        """The backend's answer to one proxy request; counted in ``proxy_requests``.
        Raises BackendUnavailable when there is no valid answer."""
        endpoint, timeout, shown = self.endpoints[kind]
        body = pp.encode_request(request)
        # Forwarded client headers first: a static header of the same name replaces them
        # (it is the operator's, the other the client's).
        if self._static_names:
            static = self._static_names
            sent = [(n, v) for n, v in headers if n.lower() not in static]
            sent += self.static_headers
        else:
            sent = list(headers)
        sent.append(_JSON)
        idempotent = kind in IDEMPOTENT
        attempts = 1 + (self.retries if idempotent else 0)
        delay = RETRY_DELAY
        reason = ""
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(delay)
                delay *= 2
            try:
                answer = await self._attempt(endpoint, timeout, body, sent, kind, idempotent)
            except _Retryable as exc:
                reason = str(exc)
                continue
            except BackendUnavailable as exc:
                reason = str(exc)
                break
            outcome = "ok" if answer.result is not None else "error"
            self.metrics.proxy_requests[(kind, outcome)] += 1
            return answer
        self.metrics.proxy_requests[(kind, "unavailable")] += 1
        # Never the headers or the bodies: they carry the user's cookies and data.
        self.log.warning("proxy request failed", proxy=kind, endpoint=shown,
                         reason=reason, attempts=attempt + 1)
        raise BackendUnavailable(f"{kind} proxy: {reason}")

    async def _attempt(self, endpoint: outbound.Endpoint, timeout: float, body: bytes,
                       headers: list[tuple[str, str]], kind: str,
                       idempotent: bool) -> pp.Answer:
        try:
            # A stale keep-alive connection is retried at once only where a second run is
            # harmless: a publish or an rpc the server may have seen must not run twice.
            resp = await self.client.request("POST", endpoint, headers=headers, body=body,
                                             timeout=timeout, retry_stale=idempotent)
        except outbound.RequestTimeout:
            raise _Retryable(f"no answer within {timeout:g} s") from None
        except outbound.ResponseTooLarge:
            raise BackendUnavailable(f"answer larger than {MAX_ANSWER_BYTES} bytes") from None
        except (outbound.ConnectError, outbound.ExchangeError) as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}") from None
        except outbound.OutboundError as exc:  # InvalidHeader, ClientClosed: no second try
            raise BackendUnavailable(f"{type(exc).__name__}: {exc}") from None
        if resp.status >= 500:
            raise _Retryable(f"status {resp.status}")
        if resp.status != 200:
            raise BackendUnavailable(f"status {resp.status}")
        try:
            return pp.decode_answer(resp.body, _RESULTS[kind])
        except pp.ProxyAnswerError as exc:
            raise BackendUnavailable(str(exc)) from None
