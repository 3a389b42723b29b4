"""Configuration: defaults, then a TOML file, then ``CLARION_*`` environment, then flags.

Option names follow Centrifugo's where one exists, so a Centrifugo config translates by copying
keys. An unknown key is an error that names it: a typo must not silently turn a feature off.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec

from clarion.errors import ConfigError
from clarion.hub.proxies import HEADERS as PROXY_HEADERS
from clarion.hub.proxies import parse_networks
from clarion.outbound import safe_url

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: float | int | str, name: str) -> float:
    """Seconds from a number of seconds or a string such as ``"300s"``, ``"5m"``, ``"1h"``."""
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(f"{name}: {value!r} is not a duration (like 30, \"30s\", \"5m\")")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not math.isfinite(seconds):
        # nan slips through every comparison below and in the timers that use it; inf would
        # overflow the event loop's timer arithmetic.
        raise ValueError(f"{name}: must be a finite number of seconds")
    if seconds < 0:
        raise ValueError(f"{name}: must not be negative")
    return seconds


class ChannelOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Options of a namespace (or of channels without one). Everything defaults to off."""

    presence: bool = False
    join_leave: bool = False
    force_push_join_leave: bool = False
    history_size: int = 0
    history_ttl: float | str = 0.0
    force_positioning: bool = False
    allow_positioning: bool = False
    force_recovery: bool = False
    allow_recovery: bool = False
    allow_subscribe_for_client: bool = False
    allow_subscribe_for_anonymous: bool = False
    allow_publish_for_subscriber: bool = False
    allow_publish_for_client: bool = False
    allow_publish_for_anonymous: bool = False
    allow_history_for_subscriber: bool = False
    allow_history_for_client: bool = False
    allow_history_for_anonymous: bool = False
    allow_presence_for_subscriber: bool = False
    allow_presence_for_client: bool = False
    allow_presence_for_anonymous: bool = False
    allow_user_limited_channels: bool = False
    channel_regex: str = ""
    # Ask the app's backend (proxy_<kind>_endpoint) instead of the allow_* flags and tokens.
    proxy_subscribe: bool = False
    proxy_publish: bool = False
    proxy_sub_refresh: bool = False

    def __post_init__(self) -> None:
        self.history_ttl = parse_duration(self.history_ttl, "history_ttl")
        if self.history_size < 0:
            raise ValueError("history_size: must not be negative")
        if bool(self.history_size) != bool(self.history_ttl):
            raise ValueError("history_size and history_ttl must be set together")
        if (self.force_recovery or self.allow_recovery) and not self.history_size:
            raise ValueError("recovery needs history_size and history_ttl")
        if self.channel_regex:
            try:
                re.compile(self.channel_regex)
            except re.error as exc:
                raise ValueError(f"channel_regex: {exc}") from None
            except (RecursionError, OverflowError):
                # sre's parser recurses per group and caps a pattern's compiled size; msgspec
                # passes only ValueError and TypeError on as a validation error.
                raise ValueError("channel_regex: the pattern is nested too deeply or too large"
                                 ) from None

    @property
    def history_enabled(self) -> bool:
        return self.history_size > 0


NamespaceOptions = ChannelOptions

_NAMESPACE_NAME = re.compile(r"^[-a-zA-Z0-9_.]{1,64}$")


REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://",
                 "redis+sentinel://", "rediss+sentinel://")


class RedisOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The ``[redis]`` table: keyword options of the Redis broker. A value left out keeps the
    broker's own default, so the defaults are written down in one place (the broker)."""

    prefix: str | None = None
    pool_size: int | None = None
    connect_timeout: float | str | None = None
    command_timeout: float | str | None = None
    ping_interval: float | str | None = None
    reconnect_delay: float | str | None = None
    reconnect_delay_max: float | str | None = None

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "command_timeout", "ping_interval", "reconnect_delay",
                     "reconnect_delay_max"):
            value = getattr(self, name)
            if value is None:
                continue
            seconds = parse_duration(value, f"redis.{name}")
            if seconds <= 0:
                raise ValueError(f"redis.{name}: must be more than 0 seconds")
            setattr(self, name, seconds)
        if self.pool_size is not None and self.pool_size <= 0:
            raise ValueError("redis.pool_size: must be positive")
        # Braces would become every key's Cluster hash tag.
        if self.prefix is not None and (
                not self.prefix or any(c in self.prefix for c in "{} \t\r\n")):
            raise ValueError("redis.prefix: must be non-empty, without {, } or spaces")
        low, high = self.reconnect_delay, self.reconnect_delay_max
        if isinstance(low, float) and isinstance(high, float) and low > high:
            raise ValueError("redis.reconnect_delay: must not exceed redis.reconnect_delay_max")

    def options(self) -> dict[str, Any]:
        """The options that were set, as ``create_broker`` keyword arguments."""
        return {name: getattr(self, name) for name in self.__struct_fields__
                if getattr(self, name) is not None}


def _check_broker(broker: str | list[str], redis: RedisOptions | None) -> None:
    if isinstance(broker, list):
        if not broker:
            raise ValueError("broker: a list of Redis URLs (shards) must not be empty")
        for url in broker:
            if not url.startswith(REDIS_SCHEMES):
                raise ValueError(f"broker: every shard must be a Redis URL (redis://, "
                                 f"rediss://, unix://, redis+cluster://, redis+sentinel://), "
                                 f"not {url!r}")
        if len(set(broker)) != len(broker):
            raise ValueError("broker: a Redis URL appears twice in the shard list")
        return
    if not broker.strip():
        raise ValueError("broker: must not be empty (\"memory\", a redis:// URL or a class)")
    if redis is not None and redis.options() and not broker.startswith(REDIS_SCHEMES):
        raise ValueError(f"redis: the [redis] table applies to a redis:// broker, and broker "
                         f"is {broker!r}")


class Config(ChannelOptions, forbid_unknown_fields=True, kw_only=True):
    """Hub settings. Top-level channel options apply to channels without a namespace."""

    host: str = "127.0.0.1"
    port: int = 8000
    # "memory", a redis://, rediss:// or unix:// URL, a list of Redis URLs (shards), or a
    # dotted path to a Broker class.
    broker: str | list[str] = "memory"
    redis: RedisOptions | None = None
    log_level: str = "info"
    log_format: str = "text"  # or "json"

    api_key: str = ""
    api_insecure: bool = False  # accept API calls without a key (development only)
    api_max_body_size: int = 1024 * 1024

    token_hmac_secret: str = ""
    token_rsa_public_key: str = ""
    token_ecdsa_public_key: str = ""
    token_audience: str = ""
    token_issuer: str = ""
    allow_anonymous_connect_without_token: bool = False
    allowed_origins: list[str] = msgspec.field(default_factory=list)

    ticket_ttl: float | str = 10.0
    ticket_max_ttl: float | str = 300.0
    session_ttl: float | str = 3600.0

    ping_interval: float | str = 25.0
    pong_timeout: float | str = 8.0
    client_stale_close_delay: float | str = 10.0
    # Grace after a token's expiry for the client's refresh to arrive (Centrifugo's defaults).
    client_expired_close_delay: float | str = 25.0
    client_expired_sub_close_delay: float | str = 25.0
    client_max_message_size: int = 65536
    client_channel_limit: int = 128
    client_queue_max_size: int = 1024 * 1024
    client_command_rate_limit: float = 100.0  # per second per connection; 0 turns it off
    client_command_burst: int = 200
    max_connections: int = 50000
    presence_ttl: float | str = 60.0
    history_meta_ttl: float | str = 30 * 86400.0

    poll_timeout: float | str = 25.0
    poll_timeout_max: float | str = 60.0
    shutdown_timeout: float | str = 10.0
    # A worker retired by a rolling restart (SIGHUP) tells its clients to reconnect a share at
    # a time over this window, so they do not all land on the other workers at once.
    reconnect_window: float | str = 2.0
    # How long info and channels wait for the other nodes' answers (clarion.hub.control).
    survey_timeout: float | str = 1.0
    workers: int = 1  # hub processes on the same ports (clarion.hub.workers); >1 needs redis

    # GRIP proxy (off unless grip_routes names a Pushpin routes file).
    grip_routes: str = ""
    grip_host: str = ""  # default: the same as host
    grip_port: int = 7999
    control_host: str = "127.0.0.1"
    control_port: int = 5561
    grip_sig_iss: str = "pushpin"
    grip_sig_key: str = "changeme"  # literal, base64:..., or file:PATH (PEM or hex)
    grip_upstream_key: str = ""  # trust requests whose Grip-Sig this key verifies
    grip_connect_timeout: float | str = 5.0
    grip_response_timeout: float | str = 60.0
    grip_max_request_body: int = 10 * 1024 * 1024
    grip_max_instruct_body: int = 1_000_000
    grip_connection_subscription_max: int = 20
    control_max_body_size: int = 1_000_000
    control_basic_auth: str = ""  # "user:password"
    control_bearer_token: str = ""
    control_jwt_key: str = ""
    control_jwt_iss: str = ""

    # Production: proxies, TLS and connection limits (docs/reference/configuration.md).
    trusted_proxies: list[str] = msgspec.field(default_factory=list)  # addresses or networks
    proxy_header: str = "x-forwarded-for"  # or "forwarded" (RFC 7239); only one is believed
    certfile: str = ""  # PEM certificate chain: the hub serves TLS (wss, https) itself
    keyfile: str = ""  # PEM private key (unencrypted); may be left out if certfile holds it
    # nginx waits 60 s for a head and Apache's mod_reqtimeout 20-40 s; a request head is a few
    # hundred bytes, so 20 s is generous for a slow mobile link and short for a slowloris.
    http_header_timeout: float | str = 20.0
    # nginx's keepalive_timeout: longer than the 60 s idle timeout of the usual load balancers,
    # so that the balancer, not the hub, closes an idle connection (no race on a reused one).
    http_keepalive_timeout: float | str = 75.0
    # Off by default, as in nginx, uvicorn and Centrifugo: a whole office or a mobile carrier
    # can share one address. Behind a proxy it counts the real client (trusted_proxies).
    max_connections_per_address: int = 0

    # Proxies to the app's backend (clarion.hub.backend, docs/topics/proxies.md): Centrifugo
    # v5's names. An endpoint left empty turns that proxy off.
    proxy_connect_endpoint: str = ""
    proxy_connect_timeout: float | str = 1.0
    proxy_refresh_endpoint: str = ""
    proxy_refresh_timeout: float | str = 1.0
    proxy_subscribe_endpoint: str = ""
    proxy_subscribe_timeout: float | str = 1.0
    proxy_publish_endpoint: str = ""
    proxy_publish_timeout: float | str = 1.0
    proxy_sub_refresh_endpoint: str = ""
    proxy_sub_refresh_timeout: float | str = 1.0
    proxy_rpc_endpoint: str = ""
    proxy_rpc_timeout: float | str = 1.0
    # Headers of the client's opening request forwarded to every proxy (Centrifugo forwards
    # none by default; the cookie is what a session-authenticated backend needs).
    proxy_http_headers: list[str] = msgspec.field(default_factory=lambda: ["Cookie", "Origin"])
    proxy_static_http_headers: dict[str, str] = msgspec.field(default_factory=dict)
    proxy_retries: int = 2  # more attempts of connect, refresh, subscribe, sub_refresh

    demo: bool = False
    namespaces: dict[str, ChannelOptions] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("ticket_ttl", "ticket_max_ttl", "session_ttl", "ping_interval",
                     "pong_timeout", "client_stale_close_delay", "client_expired_close_delay",
                     "client_expired_sub_close_delay", "presence_ttl",
                     "history_meta_ttl", "poll_timeout", "poll_timeout_max", "shutdown_timeout",
                     "reconnect_window", "grip_connect_timeout", "grip_response_timeout",
                     "survey_timeout", "http_header_timeout", "http_keepalive_timeout"):
            setattr(self, name, parse_duration(getattr(self, name), name))
        _check_proxies(self)
        for name in ("http_header_timeout", "http_keepalive_timeout"):
            # The sweep that enforces them runs once a second; a day is beyond any real wait.
            if not 1.0 <= self.seconds(name) <= 86400.0:
                raise ValueError(f"{name}: must be between 1 second and 1 day")
        if self.max_connections_per_address < 0:
            raise ValueError("max_connections_per_address: must not be negative (0 is no limit)")
        if self.proxy_header not in PROXY_HEADERS:
            raise ValueError(f"proxy_header: must be one of {', '.join(PROXY_HEADERS)}")
        parse_networks(self.trusted_proxies)
        if self.keyfile and not self.certfile:
            raise ValueError("keyfile: set without certfile (TLS needs the certificate too)")
        if not self.seconds("survey_timeout") > 0:
            raise ValueError("survey_timeout: must be more than 0 seconds")
        for name in self.namespaces:
            if not _NAMESPACE_NAME.match(name):
                raise ValueError(f"namespaces: {name!r} is not a valid namespace name")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ValueError("log_level: must be debug, info, warning or error")
        ping = self.seconds("ping_interval")
        if 0 < ping < 1:
            raise ValueError("ping_interval: must be 0 (off) or at least 1 second")
        if self.log_format not in ("text", "json"):
            raise ValueError("log_format: must be \"text\" or \"json\"")
        for name in ("client_max_message_size", "client_channel_limit", "client_queue_max_size",
                     "api_max_body_size", "max_connections", "grip_max_request_body",
                     "grip_max_instruct_body", "grip_connection_subscription_max",
                     "control_max_body_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be positive")
        if not 1 <= self.workers <= 1024:
            raise ValueError("workers: must be between 1 and 1024")
        for name in ("port", "grip_port", "control_port"):
            if not 0 < getattr(self, name) < 65536:
                raise ValueError(f"{name}: must be between 1 and 65535")
        _check_broker(self.broker, self.redis)

    def broker_options(self) -> dict[str, Any]:
        """Keyword options for ``create_broker``: the ``[redis]`` table's values that were set."""
        return self.redis.options() if self.redis is not None else {}

    def seconds(self, name: str) -> float:
        value = getattr(self, name)
        assert isinstance(value, float)
        return value


PROXY_KINDS = ("connect", "refresh", "subscribe", "publish", "sub_refresh", "rpc")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an RFC 9110 token
# Set by the hub on every request it sends, or framing and hop-by-hop headers the HTTP client
# keeps to itself: neither the operator's to add nor the client's to forward (a forwarded
# Content-Type would be a second one next to the hub's).
_OWN_HEADERS = frozenset({"content-type", "content-length", "host", "transfer-encoding",
                          "connection", "keep-alive", "upgrade", "te", "trailer",
                          "proxy-connection"})


def _check_proxies(config: Config) -> None:
    for kind in PROXY_KINDS:
        name = f"proxy_{kind}_endpoint"
        url = getattr(config, name)
        if url:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                # Never the URL as given: its user and password are the operator's secret.
                raise ValueError(f"{name}: must be an http:// or https:// URL, "
                                 f"not {safe_url(url)!r}")
        timeout_name = f"proxy_{kind}_timeout"
        seconds = parse_duration(getattr(config, timeout_name), timeout_name)
        if not 0 < seconds <= 60:
            raise ValueError(f"{timeout_name}: must be more than 0 and at most 60 seconds")
        setattr(config, timeout_name, seconds)
    for header in config.proxy_http_headers:
        if not _HEADER_NAME.match(header):
            raise ValueError(f"proxy_http_headers: {header!r} is not a header name")
        if header.lower() in _OWN_HEADERS:
            raise ValueError(f"proxy_http_headers: {header} is set by the hub, it cannot be "
                             "forwarded")
    for header, value in config.proxy_static_http_headers.items():
        if not _HEADER_NAME.match(header):
            raise ValueError(f"proxy_static_http_headers: {header!r} is not a header name")
        if header.lower() in _OWN_HEADERS:
            raise ValueError(f"proxy_static_http_headers: {header} is set by the hub")
        if any(c in value for c in "\r\n\0"):
            raise ValueError(f"proxy_static_http_headers: the value of {header} has a line "
                             f"break or NUL")
    if not 0 <= config.proxy_retries <= 5:
        raise ValueError("proxy_retries: must be between 0 and 5")
    scopes: list[tuple[str, ChannelOptions]] = [("", config)]
    scopes += [(f"[namespaces.{n}] ", ns) for n, ns in config.namespaces.items()]
    for where, options in scopes:
        for kind in ("subscribe", "publish", "sub_refresh"):
            if getattr(options, f"proxy_{kind}") and not getattr(config, f"proxy_{kind}_endpoint"):
                raise ValueError(f"{where}proxy_{kind}: needs proxy_{kind}_endpoint")


_ENV_PREFIX = "CLARION_"
# comma-separated in the environment
_LIST_FIELDS = ("allowed_origins", "trusted_proxies", "proxy_http_headers")
_JSON_FIELDS = ("proxy_static_http_headers",)  # a JSON object in the environment


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    fields = {f for f in Config.__struct_fields__ if f not in ("namespaces", "redis")}
    redis_fields = set(RedisOptions.__struct_fields__)
    out: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith(_ENV_PREFIX):
            continue
        name = key[len(_ENV_PREFIX):].lower()
        if name in _JSON_FIELDS:
            try:
                out[name] = msgspec.json.decode(value)
            except msgspec.DecodeError:
                raise ConfigError(f"{key}: must be a JSON object like "
                                  f"{{\"X-Hub-Secret\": \"…\"}}") from None
        elif name in fields:
            out[name] = [v.strip() for v in value.split(",") if v.strip()] if (
                name in _LIST_FIELDS) else value
        elif name.startswith("redis_") and name[6:] in redis_fields:
            # CLARION_REDIS_PREFIX etc.: one key of the [redis] table each.
            out.setdefault("redis", {})[name[6:]] = value
    return out


def load_config(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {path}: TOML must be UTF-8 ({exc.reason} at byte "
                              f"{exc.start})") from None
        except RecursionError:
            raise ConfigError(f"config file {path}: arrays or tables nested too deeply") from None
    env = _from_env(os.environ if environ is None else environ)
    redis_env = env.pop("redis", None)
    if redis_env:
        table = raw.get("redis")
        raw["redis"] = {**table, **redis_env} if isinstance(table, dict) else redis_env
    raw.update(env)
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    where = f"config file {path}" if path else "configuration"
    namespaces = raw.get("namespaces")
    if isinstance(namespaces, dict):
        # Checked one by one first so that an error names the namespace it is in.
        for name, options in namespaces.items():
            try:
                msgspec.convert(options, type=ChannelOptions, strict=False)
            except msgspec.ValidationError as exc:
                raise ConfigError(f"{where}: [namespaces.{name}]: {exc}") from None
            except RecursionError:
                raise ConfigError(f"{where}: [namespaces.{name}]: values nested too deeply"
                                  ) from None
    try:
        # strict=False lets environment strings become numbers and booleans.
        return msgspec.convert(raw, type=Config, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{where}: values nested too deeply") from None
