"""From what a user typed to their server's OAuth endpoints.

The order (docs/topics/connect-discovery.md explains each step):

1. :func:`parse_identifier`: ``alice@pump.example``, ``acct:alice@pump.example``,
   ``@bob@mastodon.example`` or a profile URL becomes a WebFinger resource and a host.
2. WebFinger (RFC 7033): ``GET /.well-known/webfinger?resource=…``, a JRD. A 404 for an ``acct:``
   resource means the server does not know the account: :class:`DiscoveryError`. If WebFinger
   is missing or broken otherwise, the ``lrdd`` template from host-meta is tried (RFC 6415).
3. host-meta (RFC 6415): ``/.well-known/host-meta`` (XRD, parsed with defusedxml: no entity
   expansion, no external entities, no DTD tricks) or ``/.well-known/host-meta.json`` (JRD). Its
   links give the ``lrdd`` template and, on pump.io, the OAuth 1.0a endpoints
   (``http://apinamespace.org/oauth/request_token`` …) and ``registration_endpoint``.
4. OAuth 2 metadata: RFC 8414 ``/.well-known/oauth-authorization-server`` (Mastodon 4.3+ serves it,
   with its own ``app_registration_endpoint``), then OpenID Connect discovery
   ``/.well-known/openid-configuration``.
5. Mastodon before 4.3: ``/api/v1/instance`` answers, so its fixed OAuth paths are used.

Discovery is written once, as a generator that yields the requests it wants and receives their
answers (sans-IO), and driven by :func:`discover` (sync) and :func:`adiscover` (async).
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote, urljoin, urlsplit

import httpx
import msgspec
from defusedxml import DefusedXmlException
from defusedxml import ElementTree as SafeET

from clarion.connect.fetch import JSON_ACCEPT, AsyncFetcher, Fetcher, show_url
from clarion.errors import DiscoveryError, FetchError

__all__ = ["Server", "adiscover", "discover", "parse_identifier"]

log = logging.getLogger("clarion.connect")

REL_REQUEST_TOKEN = "http://apinamespace.org/oauth/request_token"
REL_AUTHORIZE = "http://apinamespace.org/oauth/authorize"
REL_ACCESS_TOKEN = "http://apinamespace.org/oauth/access_token"
REL_PROFILE_PAGE = "http://webfinger.net/rel/profile-page"
REL_OIDC_ISSUER = "http://openid.net/specs/connect/1.0/issuer"
XRD_NS = "{http://docs.oasis-open.org/ns/xri/xrd-1.0}"
XRD_ACCEPT = "application/xrd+xml, application/xml;q=0.9, application/json;q=0.5"
_DEFAULT_PORTS = {"https": 443, "http": 80}
MAX_LRDD = 2  # lrdd templates of a host-meta tried in turn
MAX_NOTES = 8  # what went wrong, as told in the final error: the first ones, each shortened


@dataclass(frozen=True)
class Server:
    """A server and its OAuth endpoints, as discovered (stored per server by the Django app)."""

    host: str  # "pump.example" (with :port if not default)
    base_url: str  # "https://pump.example"
    protocol: Literal["oauth1", "oauth2"]
    kind: Literal["pump", "mastodon", "oauth2"]
    # OAuth 1.0a (pump.io)
    request_token_url: str = ""
    authorize_url: str = ""
    access_token_url: str = ""
    # OAuth 2 (RFC 8414 / OIDC / Mastodon)
    authorization_endpoint: str = ""
    token_endpoint: str = ""
    revocation_endpoint: str = ""
    userinfo_endpoint: str = ""
    issuer: str = ""
    scopes_supported: tuple[str, ...] = ()
    code_challenge_methods: tuple[str, ...] = ()
    registration_endpoint: str = ""  # pump: /api/client/register; mastodon: /api/v1/apps; 7591
    profile_url: str = ""  # the user's profile/self link from WebFinger, if any


def parse_identifier(text: str) -> tuple[str, str]:
    """``(resource, host)`` for WebFinger: an ``acct:`` URI (or the profile URL itself) and the
    host to ask, with ``:port`` when one was given. :class:`DiscoveryError` if it is neither."""
    value = text.strip()
    if not value:
        raise DiscoveryError("enter an account such as alice@example.org")
    lowered = value.lower()
    if lowered.startswith(("https://", "http://")):
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise DiscoveryError(f"{show_url(value)} is not a valid URL") from None
        if not parts.hostname or parts.username is not None:
            raise DiscoveryError(f"{show_url(value)} is not a valid profile URL")
        return value, parts.netloc.lower()
    if lowered.startswith("acct:"):
        value = value[5:]
    elif value.startswith("@"):
        value = value[1:]  # Mastodon's @bob@host
    user, at, host = value.rpartition("@")
    if not at or not user or not host:
        raise DiscoveryError(
            f"{text.strip()!r} is not an account address: write it as user@host "
            f"(or @user@host, or the profile's URL)")
    if any(c in host for c in "/?#@ \t") or any(c in user for c in "/?# \t"):
        raise DiscoveryError(f"{text.strip()!r} is not an account address (user@host)")
    return f"acct:{user}@{host.lower()}", host.lower()


# -- documents ------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Link:
    rel: str
    href: str = ""
    template: str = ""
    type: str = ""


def _jrd_links(doc: dict[str, Any]) -> list[_Link]:
    links = doc.get("links")
    if not isinstance(links, list):
        return []
    found = []
    for item in links:
        if not isinstance(item, dict) or not isinstance(item.get("rel"), str):
            continue  # one bad link does not spoil the document
        found.append(_Link(
            rel=item["rel"],
            href=item["href"] if isinstance(item.get("href"), str) else "",
            template=item["template"] if isinstance(item.get("template"), str) else "",
            type=item["type"] if isinstance(item.get("type"), str) else "",
        ))
    return found


def _parse_json(response: httpx.Response) -> dict[str, Any]:
    where = show_url(response.request.url)
    try:
        value = msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        raise FetchError(f"{where}: the answer is not valid JSON") from None
    if not isinstance(value, dict):
        raise FetchError(f"{where}: the answer is JSON but not an object")
    return value


def _parse_xrd(response: httpx.Response) -> list[_Link]:
    where = show_url(response.request.url)
    try:
        root = SafeET.fromstring(response.content)
    except DefusedXmlException as exc:
        # Entity declarations (billion laughs), external entities, DTD tricks: refused unread.
        raise FetchError(f"{where}: the XRD document uses a forbidden XML feature "
                         f"({type(exc).__name__})") from None
    except SafeET.ParseError as exc:
        raise FetchError(f"{where}: the XRD document is not well-formed XML ({exc})") from None
    if root.tag not in (f"{XRD_NS}XRD", "XRD"):
        raise FetchError(f"{where}: the answer is XML but not an XRD document")
    links = []
    for element in root:
        if element.tag not in (f"{XRD_NS}Link", "Link") or not element.get("rel"):
            continue
        links.append(_Link(rel=element.get("rel", ""), href=element.get("href", ""),
                           template=element.get("template", ""), type=element.get("type", "")))
    return links


def _links(response: httpx.Response) -> list[_Link]:
    """The links of a JRD or XRD answer, by its content type (JSON when it says so)."""
    kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if "json" in kind:
        return _jrd_links(_parse_json(response))
    if "xml" in kind:
        return _parse_xrd(response)
    # No or a generic content type: whichever parses.
    body = response.content.lstrip()
    if body.startswith(b"{"):
        return _jrd_links(_parse_json(response))
    return _parse_xrd(response)


def _find(links: list[_Link], rel: str) -> str:
    for link in links:
        if link.rel == rel and link.href:
            return link.href
    return ""


def _origin(url: httpx.URL) -> str:
    port = url.port
    default = _DEFAULT_PORTS.get(url.scheme)
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{url.scheme}://{host}" + (f":{port}" if port and port != default else "")


def _host_of(base: str) -> str:
    return base.split("://", 1)[1]


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, list):
        return tuple(v for v in value if isinstance(v, str))
    return ()


def _url(value: Any, base: str) -> str:
    if not isinstance(value, str) or not value:
        return ""
    return urljoin(base + "/", value)


def _metadata_urls(issuer: str, base: str) -> list[str]:
    """Where an issuer's metadata is: RFC 8414 puts the well-known segment before the issuer's
    path, OpenID Connect after it."""
    urls = []
    for root in ([issuer.rstrip("/")] if issuer.startswith(("https://", "http://")) else []) + [
            base]:
        parts = urlsplit(root)
        origin, path = f"{parts.scheme}://{parts.netloc}", parts.path.rstrip("/")
        for url in (f"{origin}/.well-known/oauth-authorization-server{path}",
                    f"{origin}{path}/.well-known/openid-configuration"):
            if url not in urls:
                urls.append(url)
    return urls


# -- the discovery, sans-IO ----------------------------------------------------------------

_Request = tuple[str, str]  # (url, Accept)
_Outcome = httpx.Response | FetchError
_Steps = Generator[_Request, _Outcome, tuple[Server, str]]


def _steps(identifier: str, allow_http: bool) -> _Steps:
    resource, host = parse_identifier(identifier)
    notes: list[str] = []  # what went wrong on the way, for the final error
    if resource.startswith(("https://", "http://")):
        schemes = [urlsplit(resource).scheme.lower()]
    else:
        schemes = ["https", "http"] if allow_http else ["https"]

    # 2. WebFinger; the first answer also tells which scheme the host speaks, and (after
    # redirects) which host really serves the API.
    base = ""
    webfinger: _Outcome | None = None
    for scheme in schemes:
        url = f"{scheme}://{host}/.well-known/webfinger?resource={quote(resource, safe='')}"
        webfinger = yield url, JSON_ACCEPT
        if isinstance(webfinger, httpx.Response):
            base = _origin(webfinger.request.url)
            break
        notes.append(f"WebFinger: {webfinger.reason}")
    if not base:
        raise DiscoveryError(f"cannot discover {host}: {_told(notes)}")
    assert isinstance(webfinger, httpx.Response)
    user_links: list[_Link] | None = None
    unknown_account = False
    if webfinger.status_code == 200:
        try:
            user_links = _links(webfinger)
        except FetchError as exc:
            notes.append(f"WebFinger: {exc.reason}")
    elif webfinger.status_code in (404, 410):
        unknown_account = True
    else:
        notes.append(f"WebFinger answered {webfinger.status_code}")

    # 3. host-meta, XRD then JRD.
    host_links: list[_Link] = []
    for path, accept in (("/.well-known/host-meta", XRD_ACCEPT),
                         ("/.well-known/host-meta.json", JSON_ACCEPT)):
        answer = yield f"{base}{path}", accept
        if isinstance(answer, FetchError):
            notes.append(f"host-meta: {answer.reason}")
            continue
        if answer.status_code != 200:
            continue
        try:
            host_links = _links(answer)
        except FetchError as exc:
            notes.append(f"host-meta: {exc.reason}")
            continue
        break

    if user_links is None:
        # WebFinger failed or said 404: RFC 6415's lrdd template may point elsewhere. At most
        # MAX_LRDD of them: a host-meta full of templates must not make us fetch each.
        tried = 0
        for link in host_links:
            if link.rel != "lrdd" or "{uri}" not in link.template:
                continue
            if tried >= MAX_LRDD:
                notes.append(f"lrdd: only the first {MAX_LRDD} templates were tried")
                break
            tried += 1
            url = _url(link.template.replace("{uri}", quote(resource, safe="")), base)
            if url.split("?")[0] == f"{base}/.well-known/webfinger":
                continue  # the same request again
            accept = JSON_ACCEPT if "json" in link.type else XRD_ACCEPT
            answer = yield url, accept
            if isinstance(answer, FetchError):
                notes.append(f"lrdd: {answer.reason}")
                continue
            if answer.status_code in (404, 410):
                unknown_account = True
                continue
            if answer.status_code == 200:
                try:
                    user_links = _links(answer)
                    unknown_account = False
                    break
                except FetchError as exc:
                    notes.append(f"lrdd: {exc.reason}")
    if user_links is None and unknown_account and resource.startswith("acct:"):
        raise DiscoveryError(f"{host} does not know the account {resource[5:]} (WebFinger 404)")
    links = (user_links or []) + host_links
    profile_url = (_find(user_links or [], REL_PROFILE_PAGE) or _find(user_links or [], "self")
                   or ("" if resource.startswith("acct:") else resource))

    # pump.io: OAuth 1.0a links in host-meta (or, elsewhere, in the user's JRD).
    request_token = _find(links, REL_REQUEST_TOKEN)
    authorize = _find(links, REL_AUTHORIZE)
    access_token = _find(links, REL_ACCESS_TOKEN)
    if request_token and authorize and access_token:
        server = Server(
            host=_host_of(base), base_url=base, protocol="oauth1", kind="pump",
            request_token_url=_url(request_token, base), authorize_url=_url(authorize, base),
            access_token_url=_url(access_token, base),
            registration_endpoint=_url(_find(links, "registration_endpoint")
                                       or "/api/client/register", base),
            profile_url=profile_url)
        return server, resource

    # 4. OAuth 2 metadata: RFC 8414, then OpenID Connect discovery, at the issuer the user's
    # JRD names (OpenID Connect Discovery 1.0, section 2) or else at the host itself.
    for url in _metadata_urls(_find(user_links or [], REL_OIDC_ISSUER), base):
        path = show_url(url)
        answer = yield url, JSON_ACCEPT
        if isinstance(answer, FetchError):
            notes.append(f"{path}: {answer.reason}")
            continue
        if answer.status_code != 200:
            continue
        try:
            meta = _parse_json(answer)
        except FetchError as exc:
            notes.append(f"{path}: {exc.reason}")
            continue
        authorization = _url(meta.get("authorization_endpoint"), base)
        token = _url(meta.get("token_endpoint"), base)
        if not authorization or not token:
            notes.append(f"{path}: no authorization_endpoint or token_endpoint")
            continue
        mastodon_apps = _url(meta.get("app_registration_endpoint"), base)
        server = Server(
            host=_host_of(base), base_url=base, protocol="oauth2",
            kind="mastodon" if mastodon_apps else "oauth2",
            authorization_endpoint=authorization, token_endpoint=token,
            revocation_endpoint=_url(meta.get("revocation_endpoint"), base),
            userinfo_endpoint=_url(meta.get("userinfo_endpoint"), base),
            issuer=meta["issuer"] if isinstance(meta.get("issuer"), str) else "",
            scopes_supported=_strings(meta.get("scopes_supported")),
            code_challenge_methods=_strings(meta.get("code_challenge_methods_supported")),
            registration_endpoint=mastodon_apps or _url(meta.get("registration_endpoint"), base),
            profile_url=profile_url)
        return server, resource

    # 5. Mastodon before 4.3: no metadata, fixed paths.
    answer = yield f"{base}/api/v1/instance", "application/json"
    if isinstance(answer, httpx.Response) and answer.status_code == 200:
        try:
            instance = _parse_json(answer)
        except FetchError as exc:
            notes.append(f"/api/v1/instance: {exc.reason}")
        else:
            if isinstance(instance.get("uri"), str) or isinstance(instance.get("domain"), str):
                server = Server(
                    host=_host_of(base), base_url=base, protocol="oauth2", kind="mastodon",
                    authorization_endpoint=f"{base}/oauth/authorize",
                    token_endpoint=f"{base}/oauth/token",
                    revocation_endpoint=f"{base}/oauth/revoke",
                    registration_endpoint=f"{base}/api/v1/apps",
                    code_challenge_methods=(), profile_url=profile_url)
                return server, resource
    detail = f" ({_told(notes)})" if notes else ""
    raise DiscoveryError(
        f"{host} publishes no OAuth endpoints: no pump.io links in host-meta, no RFC 8414 or "
        f"OpenID metadata, and it is not a Mastodon server{detail}")


def _told(notes: list[str]) -> str:
    shown = [n if len(n) <= 300 else n[:300] + "…" for n in notes[:MAX_NOTES]]
    more = f"; and {len(notes) - MAX_NOTES} more" if len(notes) > MAX_NOTES else ""
    return "; ".join(shown) + more


def _check_endpoints(server: Server, settings: Any) -> None:
    """The discovered endpoints pass the same static checks as any URL we fetch (scheme,
    https unless allowed, the policy's host rules): a user is sent to the authorization
    endpoint, and a ``javascript:`` or plain-http one must be a clear DiscoveryError."""
    for name in ("request_token_url", "authorize_url", "access_token_url",
                 "authorization_endpoint", "token_endpoint", "revocation_endpoint",
                 "userinfo_endpoint", "registration_endpoint"):
        value = getattr(server, name)
        if not value:
            continue
        try:
            settings.check_url(value)
        except FetchError as exc:
            raise DiscoveryError(f"{server.host} publishes an unusable {name}: "
                                 f"{exc.reason}") from None


def discover(identifier: str, fetcher: Fetcher) -> tuple[Server, str]:
    """``(server, resource)`` for what a user typed; :class:`DiscoveryError` says why not."""
    steps = _steps(identifier, fetcher.settings.allow_http)
    try:
        url, accept = next(steps)
        while True:
            outcome: _Outcome
            try:
                outcome = fetcher.get(url, accept=accept)
            except FetchError as exc:
                outcome = exc
            url, accept = steps.send(outcome)
    except StopIteration as done:
        server, resource = done.value
        _check_endpoints(server, fetcher.settings)
        log.info("discovered %s: %s (%s)", resource if resource.startswith("acct:") else
                 show_url(resource), server.base_url, server.kind)
        return server, resource


async def adiscover(identifier: str, fetcher: AsyncFetcher) -> tuple[Server, str]:
    """The async twin of :func:`discover`."""
    steps = _steps(identifier, fetcher.settings.allow_http)
    try:
        url, accept = next(steps)
        while True:
            outcome: _Outcome
            try:
                outcome = await fetcher.get(url, accept=accept)
            except FetchError as exc:
                outcome = exc
            url, accept = steps.send(outcome)
    except StopIteration as done:
        result: tuple[Server, str] = done.value
        _check_endpoints(result[0], fetcher.settings)
        return result
