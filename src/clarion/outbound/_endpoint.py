"""An outbound URL parsed once: where to connect and what to put in the request line."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}


def safe_url(url: str) -> str:
    """``url`` as error messages and logs may show it: no user or password, no query string
    (either may carry a secret). Never raises, whatever ``url`` is."""
    parts = urlsplit(url)
    if parts.netloc:
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
    # No "//": what looks like credentials is in the path ("user:password@host").
    path = parts.path.rpartition("@")[2]
    return f"{parts.scheme}:{path}" if parts.scheme else path


@dataclass(frozen=True, slots=True)
class Endpoint:
    """``http(s)://[user:password@]host[:port]/path[?query]``, parsed at configuration time so
    that a request does no URL work. Credentials become a Basic ``Authorization`` header (as
    httpx and curl do); the fragment is never sent."""

    scheme: str
    host: str  # as connected to: a name, or an IP address without brackets
    port: int
    target: str  # the request line's target: path and query
    host_header: str
    # The user's password, base64'd: never in a repr (tracebacks and logs show those).
    authorization: str = field(default="", repr=False)

    @property
    def origin(self) -> tuple[str, str, int]:
        """The pool key: connections are reused only for the same scheme, host and port."""
        return (self.scheme, self.host, self.port)

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """Raises ValueError naming what is wrong with ``url`` (shown without credentials)."""
        parts = urlsplit(url)
        shown_url = safe_url(url)
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS:
            raise ValueError(f"{shown_url!r}: must be an http:// or https:// URL")
        host = parts.hostname or ""
        if not host:
            raise ValueError(f"{shown_url!r}: has no host")
        try:
            given = parts.port
        except ValueError:
            given = 0
        if given == 0:  # port 0 is no port to connect to, not "the default"
            raise ValueError(f"{shown_url!r}: the port is not a number from 1 to 65535")
        port = given or DEFAULT_PORTS[scheme]
        literal6 = ":" in host  # urlsplit took the brackets off an IPv6 literal
        shown = f"[{host}]" if literal6 else host
        host_header = shown if port == DEFAULT_PORTS[scheme] else f"{shown}:{port}"
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if any(c in target for c in "\r\n\0 ") or any(c in host for c in "\r\n\0 "):
            raise ValueError(f"{shown_url!r}: contains a space or a control character")
        authorization = ""
        if parts.username is not None:
            user_pass = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            authorization = "Basic " + base64.b64encode(user_pass.encode()).decode("ascii")
        return cls(scheme, host, port, target, host_header, authorization)
