"""Browser origins: the hub's own origin for a request, and ``allowed_origins`` patterns.

Shared by the origin check (``Hub.origin_allowed``) and CORS credentials (``hub.emulation``),
so both read an origin the same way: scheme, host and port, case-insensitive, default ports
dropped. An ``http://`` page is another origin than the ``https://`` one on the same host
(anyone on the path can write it), so the scheme counts.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from clarion.hub.http import Request

_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_key(origin: str) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of an origin, the port filled in from the scheme; None for
    what is not an http(s) origin (``null``, garbage)."""
    try:
        parts = urlsplit(origin.strip().lower())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts.scheme, parts.hostname, port or _DEFAULT_PORTS[parts.scheme]


def same_origin(origin: str, request: Request) -> bool:
    """Whether ``origin`` is the one ``request`` was made to: the scheme the hub sees (its
    own TLS, or a trusted proxy's word) with the Host (or the trusted proxy's forwarded
    host)."""
    if not request.host:
        return False
    key = origin_key(origin)
    return key is not None and key == origin_key(f"{request.scheme}://{request.host}")


def normal_origin(origin: str) -> str:
    """An origin or pattern lower-cased, without the default port of its scheme."""
    origin = origin.strip().lower()
    scheme, sep, rest = origin.partition("://")
    default = _DEFAULT_PORTS.get(scheme)
    if sep and default is not None and rest.endswith(f":{default}"):
        return origin[: -len(f":{default}")]
    return origin


def matches(origin: str, patterns: Iterable[str]) -> bool:
    """Whether ``origin`` matches one of ``patterns`` (globs over the whole origin, as
    Centrifugo's ``allowed_origins``)."""
    normal = normal_origin(origin)
    return any(fnmatch.fnmatchcase(normal, normal_origin(p)) for p in patterns)
