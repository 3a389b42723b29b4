"""Parsing of the multi-host URLs: ``redis+cluster://`` and ``redis+sentinel://``."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote

from clarion.errors import ConfigError


@dataclass
class MultiHostURL:
    tls: bool
    hosts: list[tuple[str, int]]
    path: str
    username: str | None = None
    password: str | None = None
    query: dict[str, str] = field(default_factory=dict)


def _host_port(text: str, default_port: int, url: str) -> tuple[str, int]:
    if text.startswith("["):  # [IPv6]:port
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = text.partition(":")
    if not host:
        raise ConfigError(f"broker: {url!r}: a host is empty")
    try:
        return host, int(port) if port else default_port
    except ValueError:
        raise ConfigError(f"broker: {url!r}: {port!r} is not a port") from None


def parse(url: str, redacted: str, default_port: int) -> MultiHostURL:
    """``scheme://[user:password@]host:port[,host:port…][/path][?query]``; the query's
    ``addr=host:port`` (repeatable, as Centrifugo's) adds hosts."""
    scheme, _, rest = url.partition("://")
    rest, _, query_text = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if colon else None
    query: dict[str, str] = {}
    extra_hosts: list[str] = []
    for key, values in parse_qs(query_text, keep_blank_values=True).items():
        if key == "addr":
            extra_hosts.extend(values)
        else:
            query[key] = values[-1]
    hosts = [_host_port(h, default_port, redacted)
             for h in [*hostlist.split(","), *extra_hosts] if h]
    if not hosts:
        raise ConfigError(f"broker: {redacted!r} names no host")
    return MultiHostURL(scheme.startswith("rediss"), hosts, unquote(path.strip("/")) if slash
                        else "", username, password, query)
