"""The hub's HTTP client for the app's backend: connect, refresh, subscribe, publish,
sub_refresh and rpc proxies (docs/topics/proxies.md).

One pooled ``httpx.AsyncClient`` per hub, kept alive between calls and closed by
``Hub.shutdown``. A call is bounded by its proxy's timeout per attempt; the idempotent ones are
retried a few times with a short backoff. Whatever goes wrong on the way (connection refused, a
timeout, a status other than 200, a body that is not a valid answer) becomes one
``BackendUnavailable``: the session turns it into the client protocol's error, and nothing else
in the hub waits for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from clarion.errors import ClarionError
from clarion.protocol import proxy as pp

if TYPE_CHECKING:
    # Imported when a proxy is configured (Backend.__init__), not by every hub: httpx and
    # its dependencies add some 6 MB to a process that never calls a backend.
    import httpx

    from clarion.hub.config import Config
    from clarion.hub.logs import Logger
    from clarion.hub.metrics import HubMetrics

KINDS = ("connect", "refresh", "subscribe", "publish", "sub_refresh", "rpc")
# A publish or an rpc may have done something in the backend before it failed: never twice.
IDEMPOTENT = frozenset({"connect", "refresh", "subscribe", "sub_refresh"})
MAX_ANSWER_BYTES = 1024 * 1024
RETRY_DELAY = 0.1  # doubled after each failed attempt
# Pool bounds: a busy hub makes many concurrent calls, and a backend that stalls must not
# collect an unbounded number of sockets; one waiting for a free connection counts against
# the call's timeout like any other wait.
MAX_CONNECTIONS = 100
MAX_KEEPALIVE = 20
KEEPALIVE_EXPIRY = 30.0

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
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


class Backend:
    """The configured proxy endpoints and the one HTTP client that calls them."""

    def __init__(self, config: Config, metrics: HubMetrics, log: Logger,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        import httpx

        self.httpx = httpx
        self.metrics = metrics
        self.log = log
        self.retries = config.proxy_retries
        self.endpoints: dict[str, tuple[str, float]] = {}
        for kind in KINDS:
            url = getattr(config, f"proxy_{kind}_endpoint")
            if url:
                self.endpoints[kind] = (url, config.seconds(f"proxy_{kind}_timeout"))
        self.static_headers = list(config.proxy_static_http_headers.items())
        self.client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=MAX_CONNECTIONS,
                                max_keepalive_connections=MAX_KEEPALIVE,
                                keepalive_expiry=KEEPALIVE_EXPIRY),
            # The endpoints are the operator's: no proxy from the environment, no redirects
            # (a redirect would carry the user's cookies somewhere else).
            trust_env=False, follow_redirects=False, transport=transport)

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
        url, timeout = self.endpoints[kind]
        body = pp.encode_request(request)
        # Forwarded client headers first: a static header of the same name replaces them
        # (it is the operator's, the other the client's).
        static = {name.lower() for name, _ in self.static_headers}
        sent = [(n, v) for n, v in headers if n.lower() not in static]
        sent += self.static_headers
        sent.append(("content-type", "application/json"))
        attempts = 1 + (self.retries if kind in IDEMPOTENT else 0)
        delay = RETRY_DELAY
        reason = ""
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(delay)
                delay *= 2
            try:
                answer = await self._attempt(url, timeout, body, sent, kind)
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
        self.log.warning("proxy request failed", proxy=kind, endpoint=safe_endpoint(url),
                         reason=reason, attempts=attempt + 1)
        raise BackendUnavailable(f"{kind} proxy: {reason}")

    async def _attempt(self, url: str, timeout: float, body: bytes,
                       headers: list[tuple[str, str]], kind: str) -> pp.Answer:
        try:
            async with asyncio.timeout(timeout):
                async with self.client.stream("POST", url, content=body, headers=headers,
                                              timeout=timeout) as resp:
                    if resp.status_code >= 500:
                        raise _Retryable(f"status {resp.status_code}")
                    if resp.status_code != 200:
                        raise BackendUnavailable(f"status {resp.status_code}")
                    chunks: list[bytes] = []
                    size = 0
                    async for chunk in resp.aiter_bytes():
                        size += len(chunk)
                        if size > MAX_ANSWER_BYTES:
                            raise BackendUnavailable(
                                f"answer larger than {MAX_ANSWER_BYTES} bytes")
                        chunks.append(chunk)
        except TimeoutError:
            raise _Retryable(f"no answer within {timeout:g} s") from None
        except self.httpx.TimeoutException:
            raise _Retryable(f"no answer within {timeout:g} s") from None
        except self.httpx.TransportError as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}" if str(exc)
                             else type(exc).__name__) from None
        try:
            return pp.decode_answer(b"".join(chunks), _RESULTS[kind])
        except pp.ProxyAnswerError as exc:
            raise BackendUnavailable(str(exc)) from None
