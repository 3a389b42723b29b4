"""Fetching from servers nobody vetted: the address policy on every dial, bounded everything.

Discovery starts from a name a user typed (``alice@pump.example``), so every request this package
makes goes to a host chosen by a stranger, from inside the deployment's network. The webhook
engine has the same problem and its answer is reused here: the :class:`AddressPolicy` of
:mod:`clarion.webhooks.addresses`. What is checked is what is dialled: the httpcore network
backend below resolves the name through the policy and connects to one of the addresses it
allowed, never to the name, so a DNS answer that turns into ``127.0.0.1`` after the check is
refused on the connection it would have been used for. TLS still verifies the certificate for
the name (SNI and ``Host`` stay the name; only the socket goes to the vetted address).

Redirects are followed by hand (at most ``max_redirects``), and every hop is checked like the
first URL. Plain http is refused unless ``allow_http``. ``timeout`` bounds each connect and each
read, and every request as a whole (sending, headers, body: checked as each chunk arrives), and
:meth:`Fetcher.get` as a whole too (all hops); ``max_bytes`` is enforced on the decoded body
while it streams in, so a server cannot make us read or hold more than that, compressed or not.

:meth:`Fetcher.client` gives authlib (and anything else) an httpx client on the same pinned,
capped transport; it follows no redirects.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ssl
import threading
import time
import zlib
from collections.abc import AsyncIterator, Iterable, Iterator
from ipaddress import ip_address
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx
import msgspec

from clarion import __version__
from clarion.errors import AddressRejected, FetchError
from clarion.webhooks.addresses import AddressPolicy, Target

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_REDIRECTS",
    "DEFAULT_TIMEOUT",
    "AsyncFetcher",
    "Fetcher",
    "show_url",
]

DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_BYTES = 1_000_000
DEFAULT_MAX_REDIRECTS = 3
USER_AGENT = f"Clarion/{__version__}"
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
JSON_ACCEPT = "application/jrd+json, application/json;q=0.9"


def show_url(url: str | httpx.URL) -> str:
    """``url`` as messages may show it: no userinfo, no query (it can hold a token, a code or a
    resource a user typed), no fragment."""
    try:
        parts = urlsplit(str(url))
    except ValueError:
        return "<an unparseable URL>"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _ssl_context(verify: bool | str | ssl.SSLContext) -> ssl.SSLContext:
    if isinstance(verify, ssl.SSLContext):
        return verify
    if isinstance(verify, str):
        # A CA bundle's path: a private CA (a test provider, an intranet server).
        return ssl.create_default_context(cafile=verify)
    return httpx.create_ssl_context(verify=verify)


def _target(host: str, port: int) -> Target:
    """The policy's :class:`Target` for a host and port that httpcore is about to dial."""
    literal = True
    try:
        ip_address(host)
    except ValueError:
        literal = False
    return Target(scheme="https", host=host.lower(), port=port, target="/",
                  host_header=host, literal=literal)


def _resolve_blocking(policy: AddressPolicy, target: Target) -> list[str]:
    """:meth:`AddressPolicy.resolve` (a coroutine) from synchronous code, within the policy's
    ``dns_timeout``.

    The lookup runs on its own event loop in a daemon thread that is not waited for: the loop
    runs getaddrinfo in an executor thread, and ``asyncio.run`` waits for that thread at
    shutdown, so a resolver that hangs would otherwise hold the caller long past the timeout.
    (This also works from a thread that runs an event loop, where asyncio.run cannot nest.)"""
    done: concurrent.futures.Future[list[str]] = concurrent.futures.Future()

    def run() -> None:
        try:
            done.set_result(asyncio.run(policy.resolve(target)))
        except BaseException as exc:  # noqa: BLE001  # handed to the caller, raised there
            done.set_exception(exc)

    threading.Thread(target=run, name="clarion-connect-dns", daemon=True).start()
    try:
        # The policy times the lookup out itself; the margin covers starting the loop.
        return done.result(timeout=policy.dns_timeout + 0.5)
    except concurrent.futures.TimeoutError:
        raise AddressRejected(f"cannot resolve {target.host}: no answer within "
                              f"{policy.dns_timeout:g} s") from None


_WEBHOOK_SETTING = "CLARION['WEBHOOKS']['ALLOWED_NETWORKS']"


def _refused(host: str, exc: AddressRejected) -> FetchError:
    # The policy's messages are written for webhook listeners; the rule is the same here, but
    # the setting that widens it is whichever built this policy (Django: CLARION['CONNECT']).
    text = str(exc).replace("webhook URL ", "URL ").replace(
        _WEBHOOK_SETTING, "the policy's allowed networks")
    return FetchError(f"{host}: the address policy refuses it: {text}")


# Addresses of one name tried in turn, all within one connect timeout: a name with many
# unanswering addresses must not multiply the timeout.
MAX_ADDRESSES = 3


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()


class _PinnedBackend(httpcore.SyncBackend):
    """Dials only addresses the policy allows (resolved here, then connected by IP)."""

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = _resolve_blocking(self.policy, _target(host, port))
        except AddressRejected as exc:
            raise _refused(host, exc) from None
        deadline = time.monotonic() + timeout if timeout is not None else None
        error: Exception | None = None
        for address in addresses[:MAX_ADDRESSES]:
            left = _left(deadline)
            if left is not None and left <= 0:
                break
            try:
                return super().connect_tcp(address, port, left, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc  # the next vetted address may answer
        raise error or httpcore.ConnectTimeout(f"{host}: no address answered in time")


class _AsyncPinnedBackend(httpcore.AnyIOBackend):
    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await self.policy.resolve(_target(host, port))
        except AddressRejected as exc:
            raise _refused(host, exc) from None
        deadline = time.monotonic() + timeout if timeout is not None else None
        error: Exception | None = None
        for address in addresses[:MAX_ADDRESSES]:
            left = _left(deadline)
            if left is not None and left <= 0:
                break
            try:
                return await super().connect_tcp(
                    address, port, left, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise error or httpcore.ConnectTimeout(f"{host}: no address answered in time")


def _check_scheme(url: httpx.URL, allow_http: bool) -> None:
    if url.scheme == "https" or (url.scheme == "http" and allow_http):
        return
    if url.scheme == "http":
        raise FetchError(f"{show_url(url)}: plain http is not allowed; the server must use https")
    raise FetchError(f"{show_url(url)}: the scheme {url.scheme!r} is not allowed (https only)")


def _too_big(url: httpx.URL, limit: int) -> FetchError:
    return FetchError(f"{show_url(url)}: the answer is larger than the limit of {limit:,} bytes")


def _early_size_check(response: httpx.Response, limit: int) -> None:
    length = response.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise _too_big(response.request.url, limit)


class _Limits:
    """One answer's limits while its body streams in: ``limit`` decoded bytes, and (when the
    transport has a timeout) a deadline for the whole request, so a server that sends a byte
    just within every read timeout cannot hold a request open for long.

    A compressed body (the server ignored ``Accept-Encoding: identity``) is decoded here,
    ``gzip`` and ``deflate`` only, with zlib's ``max_length`` so no single chunk expands past
    the cap in memory; the caller then gets the decoded bytes and no ``Content-Encoding``."""

    def __init__(self, url: httpx.URL, limit: int, deadline: float | None, timeout: float | None,
                 encoding: str) -> None:
        self.url, self.limit, self.deadline, self.timeout = url, limit, deadline, timeout
        self.seen = 0
        self._zlib = zlib.decompressobj(47 if encoding in ("gzip", "x-gzip") else 15) \
            if encoding else None
        self._raw_deflate = encoding == "deflate"

    def check_time(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise FetchError(f"{show_url(self.url)}: no answer within {self.timeout:g} s")

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        self.check_time()
        if self._zlib is None:
            yield self._count(chunk)
            return
        data = chunk
        while data:
            out = self._inflate(data)
            data = self._zlib.unconsumed_tail if self._zlib else b""
            if out:
                yield self._count(out)
            if self._zlib is not None and self._zlib.eof:
                return

    def _inflate(self, data: bytes) -> bytes:
        assert self._zlib is not None
        room = self.limit - self.seen + 1
        try:
            return self._zlib.decompress(data, room)
        except zlib.error:
            if self._raw_deflate and self.seen == 0:
                # "deflate" is sometimes sent without the zlib wrapper (RFC 9110 §8.4.1.2).
                self._raw_deflate = False
                self._zlib = zlib.decompressobj(-15)
                return self._zlib.decompress(data, room)
            raise FetchError(f"{show_url(self.url)}: the compressed answer is corrupt") from None

    def _count(self, data: bytes) -> bytes:
        self.seen += len(data)
        if self.seen > self.limit:
            raise _too_big(self.url, self.limit)
        return data


_DECODED = frozenset({"gzip", "x-gzip", "deflate"})


def _wrap(response: httpx.Response, request: httpx.Request, limit: int,
          timeout: float | None, deadline: float | None) -> _Limits:
    """The limits of ``response``'s body; FetchError for an encoding we do not decode."""
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if encoding == "identity":
        encoding = ""
    if encoding and encoding not in _DECODED:
        # br, zstd, stacked encodings: httpx would decode them past any cap we could count.
        raise FetchError(f"{show_url(request.url)}: the answer is compressed with "
                         f"{encoding[:40]!r}, which Clarion does not accept (it asks for "
                         f"identity)")
    if encoding:
        del response.headers["content-encoding"]
        response.headers.pop("content-length", None)
    return _Limits(request.url, limit, deadline, timeout, encoding)


class _CappedStream(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, limits: _Limits) -> None:
        self._inner, self._limits = inner, limits

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            yield from self._limits.feed(chunk)

    def close(self) -> None:
        self._inner.close()


class _AsyncCappedStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, limits: _Limits) -> None:
        self._inner, self._limits = inner, limits

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            for piece in self._limits.feed(chunk):
                yield piece

    async def aclose(self) -> None:
        await self._inner.aclose()


class PinnedTransport(httpx.HTTPTransport):
    """httpx's transport on the pinned network backend, refusing plain http unless allowed,
    capping every answer's decoded body at ``max_bytes`` and, with ``timeout``, each request
    as a whole (sending, the headers and the body) at ``timeout`` seconds."""

    def __init__(self, policy: AddressPolicy, *, verify: bool | str | ssl.SSLContext = True,
                 allow_http: bool = False, max_bytes: int = DEFAULT_MAX_BYTES,
                 timeout: float | None = None) -> None:
        context = _ssl_context(verify)
        super().__init__(verify=context, trust_env=False)
        # httpx has no network_backend option: the pool it built is replaced by the same pool on
        # ours (tests/test_connect_core.py proves the dial is pinned, should httpx change).
        self._pool = httpcore.ConnectionPool(
            ssl_context=context, network_backend=_PinnedBackend(policy))
        self.allow_http = allow_http
        self.max_bytes = max_bytes
        self.timeout = timeout

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        _check_scheme(request.url, self.allow_http)
        deadline = time.monotonic() + self.timeout if self.timeout else None
        response = super().handle_request(request)
        response.request = request
        try:
            _early_size_check(response, self.max_bytes)
            limits = _wrap(response, request, self.max_bytes, self.timeout, deadline)
            limits.check_time()
        except FetchError:
            response.close()
            raise
        assert isinstance(response.stream, httpx.SyncByteStream)
        response.stream = _CappedStream(response.stream, limits)
        return response


class AsyncPinnedTransport(httpx.AsyncHTTPTransport):
    """The async twin of :class:`PinnedTransport`."""

    def __init__(self, policy: AddressPolicy, *, verify: bool | str | ssl.SSLContext = True,
                 allow_http: bool = False, max_bytes: int = DEFAULT_MAX_BYTES,
                 timeout: float | None = None) -> None:
        context = _ssl_context(verify)
        super().__init__(verify=context, trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=context, network_backend=_AsyncPinnedBackend(policy))
        self.allow_http = allow_http
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        _check_scheme(request.url, self.allow_http)
        deadline = time.monotonic() + self.timeout if self.timeout else None
        response = await super().handle_async_request(request)
        response.request = request
        try:
            _early_size_check(response, self.max_bytes)
            limits = _wrap(response, request, self.max_bytes, self.timeout, deadline)
            limits.check_time()
        except FetchError:
            await response.aclose()
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _AsyncCappedStream(response.stream, limits)
        return response


def translate_http_error(exc: httpx.HTTPError, url: httpx.URL | str,
                         timeout: float) -> FetchError:
    """httpx's error as a :class:`FetchError` naming the URL (without its query)."""
    where = show_url(url)
    if isinstance(exc, httpx.TimeoutException):
        return FetchError(f"{where}: no answer within {timeout:g} s")
    if isinstance(exc, httpx.ConnectError):
        cause = exc.__context__ or exc.__cause__
        if isinstance(cause, ssl.SSLError) or "SSL" in str(exc) or "certificate" in str(exc):
            return FetchError(f"{where}: the TLS handshake failed ({exc})")
        return FetchError(f"{where}: cannot connect ({exc or type(exc).__name__})")
    if isinstance(exc, httpx.ProtocolError | httpx.DecodingError):
        return FetchError(f"{where}: the server sent malformed HTTP ({exc})")
    return FetchError(f"{where}: the request failed ({type(exc).__name__}: {exc})")


class _Settings:
    """What the sync and async fetchers share: the limits and the per-hop checks."""

    def __init__(self, policy: AddressPolicy, *, timeout: float, max_bytes: int,
                 max_redirects: int, allow_http: bool, verify: bool | str | ssl.SSLContext,
                 user_agent: str) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        if max_bytes < 1 or max_redirects < 0:
            raise ValueError("max_bytes must be at least 1 and max_redirects at least 0")
        self.policy = policy
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.max_redirects = max_redirects
        self.allow_http = allow_http
        # Built once: loading a CA bundle takes longer than many of the requests it serves.
        self.ssl_context = _ssl_context(verify)
        self.user_agent = user_agent

    def check_url(self, url: str | httpx.URL) -> httpx.URL:
        """The static checks of one hop (no DNS): scheme, credentials, host form, IP literals."""
        text = str(url)
        try:
            parsed = httpx.URL(text)
        except httpx.InvalidURL as exc:
            raise FetchError(f"{show_url(text)} is not a valid URL ({exc})") from None
        _check_scheme(parsed, self.allow_http)
        try:
            self.policy.parse_url(text)
        except AddressRejected as exc:
            host = parsed.host or show_url(text)
            raise _refused(host, exc) from None
        return parsed

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        # identity: nothing to decode. A server that compresses anyway is decoded under the
        # cap by the transport (gzip, deflate) or refused (anything else).
        headers = {"User-Agent": self.user_agent, "Accept-Encoding": "identity"}
        headers.update(extra or {})
        return headers

    def next_hop(self, response: httpx.Response, hops: int) -> httpx.URL | None:
        """The URL to follow, or None when ``response`` is the answer."""
        if response.status_code not in _REDIRECTS:
            return None
        location = response.headers.get("location")
        url = response.request.url
        if not location:
            raise FetchError(f"{show_url(url)}: a {response.status_code} redirect without Location")
        if hops >= self.max_redirects:
            raise FetchError(f"{show_url(url)}: more than {self.max_redirects} redirects")
        try:
            target = url.join(location)
        except httpx.InvalidURL:
            raise FetchError(f"{show_url(url)}: redirect to an invalid URL") from None
        if url.scheme == "https" and target.scheme == "http":
            raise FetchError(f"{show_url(url)}: redirect from https to plain http "
                             f"({show_url(target)}) refused")
        try:
            return self.check_url(target)
        except FetchError as exc:
            raise FetchError(f"{show_url(url)} redirects to a forbidden place: {exc}") from None

    def client_kwargs(self, transport: httpx.BaseTransport | httpx.AsyncBaseTransport,
                      kwargs: dict[str, Any]) -> dict[str, Any]:
        options: dict[str, Any] = {
            "transport": transport,
            "timeout": httpx.Timeout(self.timeout),
            "headers": self.headers(),
            "follow_redirects": False,
            "trust_env": False,  # an environment proxy would be dialled instead of the policy's
        }
        options.update(kwargs)
        return options


def _read_response(streamed: httpx.Response, body: bytearray) -> httpx.Response:
    """The answer with its body as read (decoded), so callers use ``.content``/``.json()``
    without more I/O; the encoding headers go, since the body is no longer encoded."""
    headers = [(k, v) for k, v in streamed.headers.multi_items()
               if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")]
    return httpx.Response(streamed.status_code, headers=headers, content=bytes(body),
                          request=streamed.request)


def _decode_json(response: httpx.Response) -> dict[str, Any]:
    where = show_url(response.request.url)
    if not 200 <= response.status_code < 300:
        raise FetchError(f"{where} answered {response.status_code}, not a JSON document")
    try:
        value = msgspec.json.decode(response.content)
    except msgspec.DecodeError as exc:
        kind = response.headers.get("content-type", "no content type").split(";")[0]
        raise FetchError(f"{where}: the answer is not valid JSON ({kind}; {exc})") from None
    if not isinstance(value, dict):
        raise FetchError(f"{where}: the answer is JSON but not an object")
    return value


class _FetcherBase:
    """What the sync and async fetchers share: their settings and the httpx client arguments
    on a new pinned transport of their own kind."""

    def __init__(
        self,
        policy: AddressPolicy,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_redirects: int = DEFAULT_MAX_REDIRECTS,
        allow_http: bool = False,
        verify: bool | str | ssl.SSLContext = True,
        user_agent: str = USER_AGENT,
    ) -> None:
        self.settings = _Settings(
            policy, timeout=timeout, max_bytes=max_bytes, max_redirects=max_redirects,
            allow_http=allow_http, verify=verify, user_agent=user_agent)
        self._client = self.client()

    @property
    def policy(self) -> AddressPolicy:
        return self.settings.policy

    def transport(self) -> PinnedTransport | AsyncPinnedTransport:
        raise NotImplementedError

    def client(self, **kwargs: Any) -> Any:
        raise NotImplementedError

    def client_kwargs(self, **kwargs: Any) -> dict[str, Any]:
        """The keyword arguments of an httpx client on a new pinned transport: for authlib's
        ``OAuth1Client``/``OAuth2Client``, which take httpx's arguments."""
        return self.settings.client_kwargs(self.transport(), kwargs)


class Fetcher(_FetcherBase):
    """Fetches documents (WebFinger, host-meta, metadata) and posts registrations, safely.

    ``timeout`` (seconds) bounds each connect and read, each request as a whole (body
    included), and :meth:`get` as a whole (redirects included); ``max_bytes`` caps a decoded
    body; ``max_redirects`` counts hops :meth:`get` follows (:meth:`post` and :meth:`client`
    follow none). ``verify``: True (certifi), False, a CA bundle's path, or an
    ``ssl.SSLContext``."""

    _client: httpx.Client

    def transport(self) -> PinnedTransport:
        """A new pinned, capped transport (each client owns and closes its own)."""
        s = self.settings
        return PinnedTransport(s.policy, verify=s.ssl_context, allow_http=s.allow_http,
                               max_bytes=s.max_bytes, timeout=s.timeout)


    def client(self, **kwargs: Any) -> httpx.Client:
        """An httpx client whose every connection goes through the address policy."""
        return httpx.Client(**self.client_kwargs(**kwargs))

    def get(self, url: str, *, accept: str) -> httpx.Response:
        """GET ``url``, following up to ``max_redirects`` checked redirects; the final answer
        (any status but a redirect) with its body read, at most ``max_bytes`` decoded bytes."""
        s = self.settings
        deadline = time.monotonic() + s.timeout
        current = s.check_url(url)
        hops = 0
        while True:
            response = self._get_once(current, accept, deadline)
            following = s.next_hop(response, hops)
            if following is None:
                return response
            current, hops = following, hops + 1

    def _get_once(self, url: httpx.URL, accept: str, deadline: float) -> httpx.Response:
        s = self.settings
        left = deadline - time.monotonic()
        if left <= 0:
            raise FetchError(f"{show_url(url)}: no answer within {s.timeout:g} s")
        try:
            with self._client.stream("GET", url, headers=s.headers({"Accept": accept}),
                                     timeout=httpx.Timeout(left)) as response:
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > s.max_bytes:
                        raise _too_big(url, s.max_bytes)
                    if time.monotonic() > deadline:
                        raise FetchError(f"{show_url(url)}: no answer within {s.timeout:g} s")
        except httpx.HTTPError as exc:
            raise translate_http_error(exc, url, s.timeout) from None
        return _read_response(response, body)

    def get_json(self, url: str) -> dict[str, Any]:
        """GET a JSON object (JRD, metadata); FetchError unless the answer is a 2xx object."""
        return _decode_json(self.get(url, accept=JSON_ACCEPT))

    def post(self, url: str, *, data: dict[str, Any] | None = None, json: Any = None,
             headers: dict[str, str] | None = None) -> httpx.Response:
        """POST a form (``data``) or JSON; redirects are not followed (the 3xx is returned)."""
        s = self.settings
        target = s.check_url(url)
        try:
            response = self._client.post(
                target, data=data, json=json,
                headers=s.headers({"Accept": "application/json", **(headers or {})}))
        except httpx.HTTPError as exc:
            raise translate_http_error(exc, target, s.timeout) from None
        return response

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncFetcher(_FetcherBase):
    """The async twin of :class:`Fetcher`: the same arguments, methods as coroutines."""

    _client: httpx.AsyncClient

    def transport(self) -> AsyncPinnedTransport:
        s = self.settings
        return AsyncPinnedTransport(s.policy, verify=s.ssl_context, allow_http=s.allow_http,
                                    max_bytes=s.max_bytes, timeout=s.timeout)


    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(**self.client_kwargs(**kwargs))

    async def get(self, url: str, *, accept: str) -> httpx.Response:
        s = self.settings
        current = s.check_url(url)
        hops = 0
        try:
            async with asyncio.timeout(s.timeout):
                while True:
                    response = await self._get_once(current, accept)
                    following = s.next_hop(response, hops)
                    if following is None:
                        return response
                    current, hops = following, hops + 1
        except TimeoutError:
            raise FetchError(f"{show_url(current)}: no answer within {s.timeout:g} s") from None

    async def _get_once(self, url: httpx.URL, accept: str) -> httpx.Response:
        s = self.settings
        try:
            async with self._client.stream(
                    "GET", url, headers=s.headers({"Accept": accept})) as response:
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > s.max_bytes:
                        raise _too_big(url, s.max_bytes)
        except httpx.HTTPError as exc:
            raise translate_http_error(exc, url, s.timeout) from None
        return _read_response(response, body)

    async def get_json(self, url: str) -> dict[str, Any]:
        return _decode_json(await self.get(url, accept=JSON_ACCEPT))

    async def post(self, url: str, *, data: dict[str, Any] | None = None, json: Any = None,
                   headers: dict[str, str] | None = None) -> httpx.Response:
        s = self.settings
        target = s.check_url(url)
        try:
            response = await self._client.post(
                target, data=data, json=json,
                headers=s.headers({"Accept": "application/json", **(headers or {})}))
        except httpx.HTTPError as exc:
            raise translate_http_error(exc, target, s.timeout) from None
        return response

    async def close(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> AsyncFetcher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
