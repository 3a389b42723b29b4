"""``REALTIME_TICKET_EXPIRE`` and ``REALTIME_TICKET_REDIS``: read at each use, checked at start.

The names and the dict shape are django-realtime-ticket's, so its settings keep working. A typo
in a key or a value of the wrong type raises :class:`~clarion.errors.ConfigError` naming it
(system checks ``clarion.E201``/``clarion.E202`` report the same at ``manage.py check``): a
misspelt ``socket_timeout`` must not silently leave a page blocked on a dead Redis.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings

from clarion.errors import ConfigError

DEFAULT_EXPIRE = 10.0
MIN_EXPIRE = 1.0
# The hub's API refuses tickets longer than its ``ticket_max_ttl`` (300 s by default); a ticket
# written straight into Redis must not outlive what the hub would have issued itself.
MAX_EXPIRE = 300.0
DEFAULT_SOCKET_TIMEOUT = 1.0  # the seed's example; redis-py's own default blocks forever
_URL_SCHEMES = ("redis", "rediss", "unix")
_KEYS = frozenset({"host", "port", "db", "password", "username", "socket_timeout", "prefix",
                   "url", "ssl"})


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where tickets are written. Hashable: one pooled client per distinct target."""

    # Out of repr (it may hold the password); when set, host, port, db, password, username
    # and ssl come from it.
    url: str | None = field(default=None, repr=False)
    host: str = "localhost"
    port: int = 6379
    db: int = 0
    password: str | None = field(default=None, repr=False)
    username: str | None = None
    ssl: bool = False
    socket_timeout: float = DEFAULT_SOCKET_TIMEOUT
    prefix: str = "clarion"

    def display(self) -> str:
        """Where, without the password (for logs and errors)."""
        if self.url is not None:
            parts = urlsplit(self.url)
            return parts._replace(netloc=parts.netloc.rpartition("@")[2], query="").geturl()
        return f"redis://{self.host}:{self.port}/{self.db}"


@dataclass(frozen=True, slots=True)
class TicketSettings:
    expire: float
    redis: RedisTarget | None  # None: tickets go through clarion.django.realtime.issue_ticket


def ticket_settings() -> TicketSettings:
    """The current settings, validated; raises ConfigError naming the bad setting."""
    return TicketSettings(
        parse_expire(getattr(settings, "REALTIME_TICKET_EXPIRE", DEFAULT_EXPIRE)),
        parse_redis(getattr(settings, "REALTIME_TICKET_REDIS", None)),
    )


def parse_expire(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"REALTIME_TICKET_EXPIRE must be a number of seconds, not {value!r}")
    if not MIN_EXPIRE <= value <= MAX_EXPIRE:
        raise ConfigError(f"REALTIME_TICKET_EXPIRE must be between {MIN_EXPIRE:g} and "
                          f"{MAX_EXPIRE:g} seconds, not {value!r}")
    return float(value)


def parse_redis(value: Any) -> RedisTarget | None:
    """``None``, a URL (``redis://[:password@]host:port/db``, ``rediss://``, ``unix://``), or
    the seed's dict (``host``, ``port``, ``db``, ``socket_timeout``, optional ``password``,
    ``username``, ``ssl``, ``prefix``; or ``url`` plus ``socket_timeout``/``prefix``)."""
    if value is None:
        return None
    if isinstance(value, str):
        _check_url(value)
        return RedisTarget(url=value)
    if not isinstance(value, Mapping):
        raise ConfigError("REALTIME_TICKET_REDIS must be a dict (host, port, db, "
                          f"socket_timeout, …) or a redis:// URL, not {type(value).__name__}")
    unknown = set(value) - _KEYS
    if unknown:
        raise ConfigError(f"REALTIME_TICKET_REDIS has unknown keys {sorted(map(str, unknown))}; "
                          f"known: {sorted(_KEYS)}")
    fields: dict[str, Any] = {}
    if "url" in value:
        clash = set(value) & {"host", "port", "db", "password", "username", "ssl"}
        if clash:
            raise ConfigError(f"REALTIME_TICKET_REDIS: 'url' and {sorted(clash)} both given; "
                              "put everything in the URL, or leave 'url' out")
        url = value["url"]
        if not isinstance(url, str):
            raise ConfigError(f"REALTIME_TICKET_REDIS['url'] must be a string, not {url!r}")
        _check_url(url)
        fields["url"] = url
    for key, kind, test, what in (
        ("host", str, lambda v: bool(v), "a non-empty string"),
        ("port", int, lambda v: 0 < v < 65536, "a port number (1-65535)"),
        ("db", int, lambda v: v >= 0, "a database number (0 or more)"),
        ("password", str, lambda v: True, "a string"),
        ("username", str, lambda v: bool(v), "a non-empty string"),
        ("ssl", bool, lambda v: True, "True or False"),
    ):
        if key in value and not (key in ("password", "username") and value[key] is None):
            item = value[key]
            if (isinstance(item, bool) and kind is not bool) or not isinstance(item, kind) \
                    or not test(item):
                raise ConfigError(f"REALTIME_TICKET_REDIS['{key}'] must be {what}, "
                                  f"not {item!r}")
            fields[key] = item
    if "socket_timeout" in value:
        timeout = value["socket_timeout"]
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ConfigError("REALTIME_TICKET_REDIS['socket_timeout'] must be a positive "
                              f"number of seconds, not {timeout!r} (None would let a dead "
                              "Redis hang the request)")
        fields["socket_timeout"] = float(timeout)
    if "prefix" in value:
        prefix = value["prefix"]
        # The hub refuses the same prefixes ([redis] prefix in its configuration).
        if not isinstance(prefix, str) or not prefix or any(c in prefix for c in "{} \t\r\n"):
            raise ConfigError("REALTIME_TICKET_REDIS['prefix'] must be a non-empty string "
                              f"without {{, }} or spaces (the hub's [redis] prefix), not "
                              f"{prefix!r}")
        fields["prefix"] = prefix
    return RedisTarget(**fields)


def _check_url(url: str) -> None:
    scheme = url.partition("://")[0] if "://" in url else ""
    if scheme not in _URL_SCHEMES:
        hint = ""
        if scheme.startswith("redis+") or "," in url:
            hint = (": tickets written straight into Redis need the single Redis the hub "
                    "uses; with Sentinel, Cluster or shards leave REALTIME_TICKET_REDIS unset "
                    "so tickets go through clarion.django.realtime.issue_ticket")
        # Only the scheme is quoted: the rest of a URL may hold the password.
        what = f"the scheme {scheme}://" if scheme else "a URL without a scheme"
        raise ConfigError(f"REALTIME_TICKET_REDIS: {what} is not redis://, rediss:// or "
                          f"unix://{hint}")
    if "," in url.partition("://")[2].partition("/")[0]:
        raise ConfigError("REALTIME_TICKET_REDIS: one Redis only (shards: leave "
                          "REALTIME_TICKET_REDIS unset and use CLARION['BROKER'])")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  # raises ValueError on a bad port
    except ValueError as exc:
        raise ConfigError(f"REALTIME_TICKET_REDIS: bad URL ({exc})") from None
    if scheme != "unix" and not parts.hostname:
        raise ConfigError("REALTIME_TICKET_REDIS: the URL names no host")
