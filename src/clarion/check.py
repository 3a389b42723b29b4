"""``clarion check``: will the hub start with this configuration, and are its services there?

Like ``nginx -t``, it is meant to run before a restart (``ExecStartPre=``, a deploy script):

1. the configuration is loaded by the hub's own loader (file, ``CLARION_*`` environment,
   flags), and what the hub checks only at start is checked too: the TLS certificate, the GRIP
   routes file, ``workers`` > 1 on a broker that only one process can use;
2. the broker is reached the way the hub reaches it: connect, the Pub/Sub link, and one call
   of the history script on a probe channel (so a Redis that refuses scripts or writes through
   its ACLs is found here, not at the first publication). The probe's keys are removed, and
   expire within a minute if the removal fails;
3. with ``--webhooks-db FILE`` or ``--settings MODULE`` (a Django project's settings), the
   webhook database is connected to, its migrations checked, and Django's system checks of the
   ``clarion`` app run. Only when asked: the hub needs no Django, and a hub unit whose
   environment names the project's settings must not fail its check on them;
4. every proxy endpoint of the app's backend (``proxy_*_endpoint``) accepts a TCP connection
   (no request is sent);
5. the effective settings are printed as TOML with every secret masked.

Exit status: 0 when all is well; 2 for a configuration the hub would refuse (as ``clarion
serve`` exits); 1 when a service cannot be reached or is not ready. Every problem is one line on
standard error naming what failed.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import msgspec

from clarion.errors import ClarionError, ConfigError

__all__ = ["add_arguments", "check", "effective_settings", "main", "mask_url"]

# A probe channel no client can subscribe to by accident (the namespace separator is ":").
PROBE_CHANNEL = "_clarion_check:probe"
# Seconds the probe's metadata key lives if removing it fails.
PROBE_TTL = 60.0
MASK = "********"

# Settings whose values are credentials. Public keys and file paths are not secrets.
_SECRETS = frozenset({
    "api_key", "token_hmac_secret", "grip_sig_key", "grip_upstream_key",
    "control_basic_auth", "control_bearer_token", "control_jwt_key",
})
# Keys the hub reads as "file:PATH" too (GRIP's key syntax): a path is no secret.
_FILE_KEYS = frozenset({"grip_sig_key", "grip_upstream_key"})
_PASSWORD_PARAM = re.compile(r"((?:^|[?&])[a-z_]*password=)[^&]*", re.IGNORECASE)


class _Problem(ClarionError):
    """A service the configuration names is not reachable or not ready (exit status 1)."""


def mask_url(url: str) -> str:
    """``url`` without its password: in the userinfo and in ``password=`` parameters
    (``sentinel_password=`` included)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, tail = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")
    if at:
        user = userinfo.partition(":")[0]
        authority = f"{user}:{MASK}@{host}"
    tail = _PASSWORD_PARAM.sub(lambda m: m.group(1) + MASK, tail)
    return f"{scheme}{sep}{authority}{slash}{tail}"


def _scrub(text: str, broker: str | list[str]) -> str:
    """``text`` with every password of the broker URLs replaced by the mask."""
    for url in broker if isinstance(broker, list) else [broker]:
        _, _, rest = url.partition("://")
        authority = rest.partition("/")[0]
        userinfo = authority.rpartition("@")[0]
        secrets = [userinfo.partition(":")[2]] if userinfo else []
        secrets += [m.group(1) for m in re.finditer(r"password=([^&]*)", url, re.IGNORECASE)]
        for secret in secrets:
            if secret:
                text = text.replace(secret, MASK)
    return text


def _masked(name: str, value: Any) -> Any:
    if name.startswith("proxy_") and name.endswith("_endpoint") and value:
        return mask_url(value)
    if name in _SECRETS and isinstance(value, str) and value:
        # A key kept in a file is named by its path, which is no secret and worth seeing.
        return value if name in _FILE_KEYS and value.startswith("file:") else MASK
    if name == "broker":
        return [mask_url(u) for u in value] if isinstance(value, list) else mask_url(value)
    return value


def effective_settings(config: Any) -> str:
    """The configuration as TOML, secrets masked, durations in seconds, every key shown."""
    from clarion.hub.config import ChannelOptions

    raw = msgspec.to_builtins(config)
    scalars = {k: v for k, v in raw.items() if not isinstance(v, dict)}
    # The hub's own settings first, then the options of channels without a namespace.
    channel = set(ChannelOptions.__struct_fields__)
    lines = [f"{k} = {_toml(_masked(k, v))}" for k, v in scalars.items() if k not in channel]
    lines += ["", "# channels without a namespace"]
    lines += [f"{k} = {_toml(v)}" for k, v in scalars.items() if k in channel]
    if raw.get("proxy_static_http_headers"):
        # Sent to the app's backend, typically a shared secret: names only.
        lines += ["", "[proxy_static_http_headers]"]
        lines += [f"{json.dumps(k)} = {_toml(MASK)}"
                  for k in raw["proxy_static_http_headers"]]
    if raw.get("redis"):
        lines += ["", "[redis]"]
        lines += [f"{k} = {_toml(v)}" for k, v in raw["redis"].items() if v is not None]
    for name, options in (raw.get("namespaces") or {}).items():
        # A dot in a bare key would nest tables; namespace names may contain dots.
        key = name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)
        lines += ["", f"[namespaces.{key}]"]
        lines += [f"{k} = {_toml(v)}" for k, v in options.items()]
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    # A TOML basic string is a JSON string for everything json.dumps writes with ASCII escapes.
    return json.dumps(str(value))


def check(
    config_path: str | None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    webhooks_db: str | None = None,
    settings: str | None = None,
    timeout: float = 10.0,
    quiet: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Run every check; print results to ``out`` and problems to ``err``; the exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    env = os.environ if environ is None else environ

    def say(line: str) -> None:
        print(f"clarion check: {line}", file=out, flush=True)

    from clarion.hub.config import load_config

    try:
        config = load_config(config_path, environ=env, overrides=overrides)
        _check_startup(config)
    except ConfigError as exc:
        print(f"clarion check: {exc}", file=err, flush=True)
        print("clarion check: the configuration is invalid; the hub would not start",
              file=err, flush=True)
        return 2
    say(f"configuration {config_path or '(defaults, environment and flags)'}: ok")
    for warning in _warnings(config):
        # --quiet (a unit's ExecStartPre) drops the results, not the warnings: on standard
        # error they reach the journal, where someone may read them.
        print(f"clarion check: warning: {warning}", file=err if quiet else out, flush=True)
    if config.certfile:
        say(f"TLS certificate {config.certfile}: ok")
    if config.grip_routes:
        say(f"GRIP routes {config.grip_routes}: ok")

    problems = 0
    invalid = False
    steps: list[Callable[[], list[str]]] = [partial(_check_broker, config, timeout)]
    steps += [partial(_check_proxy, url, kinds, timeout)
              for url, kinds in _proxy_endpoints(config).items()]
    if webhooks_db or settings:
        steps.append(partial(_check_database, webhooks_db, settings, timeout))
    for step in steps:
        try:
            for line in step():
                say(line)
        except (_Problem, ConfigError) as exc:
            problems += 1
            invalid = invalid or isinstance(exc, ConfigError)
            print(f"clarion check: {exc}", file=err, flush=True)
    if not quiet:
        print("# effective settings (secrets masked)", file=out)
        print(effective_settings(config), file=out, end="", flush=True)
    if problems:
        print(f"clarion check: {problems} problem{'s' if problems > 1 else ''} found",
              file=err, flush=True)
        return 2 if invalid else 1
    say("all checks passed")
    return 0


def _warnings(config: Any) -> list[str]:
    """Settings the hub starts with but that are rarely what production wants."""
    out = []
    if not config.api_key and not config.api_insecure:
        out.append("api_key is empty: the server API refuses every call (set CLARION_API_KEY)")
    if config.api_insecure:
        out.append("api_insecure = true: anyone who reaches /api/ may publish and disconnect")
    if config.grip_routes and config.grip_sig_key == "changeme":
        out.append("grip_sig_key is Pushpin's default \"changeme\": origins cannot tell "
                   "the proxy from anyone else")
    for url, kinds in _proxy_endpoints(config).items():
        parts = urlsplit(url)
        if parts.scheme == "http" and not _is_loopback(parts.hostname or ""):
            out.append(f"proxy {'/'.join(kinds)} endpoint {mask_url(url)} is plain HTTP to "
                       "another host: the user's cookies cross the network unencrypted "
                       "(use https://)")
    if _proxy_endpoints(config) and not config.proxy_static_http_headers:
        out.append("proxies configured without proxy_static_http_headers: the backend cannot "
                   "tell the hub's requests from anyone else's (send a shared secret header)")
    if config.host not in ("127.0.0.1", "::1", "localhost") and not config.trusted_proxies \
            and not config.certfile:
        out.append(f"host = {config.host!r} without certfile or trusted_proxies: clients "
                   "reach the hub directly over plain HTTP")
    return out


def _check_startup(config: Any) -> None:
    """What ``clarion serve`` refuses at start, beyond the loader: a ConfigError each."""
    if config.workers > 1 and config.broker in ("memory", "memory://"):
        raise ConfigError(f"workers = {config.workers} needs a broker shared between "
                          "processes (a redis:// URL); the memory broker lives in one process")
    from clarion.hub.tls import server_context

    server_context(config.certfile, config.keyfile)
    if config.grip_routes:
        from clarion.errors import GripError
        from clarion.protocol.grip.routes import parse_routes

        try:
            text = Path(config.grip_routes).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"grip_routes {config.grip_routes}: {exc}") from None
        try:
            parse_routes(text, config.grip_routes)
        except GripError as exc:
            raise ConfigError(f"grip_routes: {exc}") from None
        from clarion.hub.grip.proxy import read_key_file
        from clarion.protocol.grip.sig import decode_key

        for name in sorted(_FILE_KEYS):
            spec = getattr(config, name)
            try:
                if spec:
                    decode_key(spec, read_key_file)
            except (GripError, OSError) as exc:
                # The message names a file or the first characters of a base64 key only.
                raise ConfigError(f"{name}: {exc}") from None


def _proxy_endpoints(config: Any) -> dict[str, list[str]]:
    """Each configured proxy endpoint and the proxies that use it."""
    from clarion.hub.config import PROXY_KINDS

    out: dict[str, list[str]] = {}
    for kind in PROXY_KINDS:
        url = getattr(config, f"proxy_{kind}_endpoint")
        if url:
            out.setdefault(url, []).append(kind)
    return out


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_proxy(url: str, kinds: list[str], timeout: float) -> list[str]:
    """The backend's address accepts a TCP connection. No request is sent: a proxy request
    would run the backend's handler (a connect, an rpc) for nothing."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    shown = f"proxy {'/'.join(kinds)} {mask_url(url)}"

    async def reach() -> float:
        started = time.monotonic()
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port)
        writer.close()
        return time.monotonic() - started

    try:
        elapsed = asyncio.run(reach())
    except TimeoutError:
        raise _Problem(f"{shown}: no TCP connection within {timeout:g} s") from None
    except OSError as exc:
        raise _Problem(f"{shown}: {exc.strerror or exc}") from None
    return [f"{shown}: reachable ({elapsed * 1000:.1f} ms to connect; not called)"]


def _check_broker(config: Any, timeout: float) -> list[str]:
    broker_text = _masked("broker", config.broker)
    shown = ",".join(broker_text) if isinstance(broker_text, list) else broker_text
    if isinstance(config.broker, str) and config.broker in ("memory", "memory://"):
        return [f"broker {shown}: in this process (nothing to reach; one hub process only)"]
    try:
        elapsed = asyncio.run(_probe_broker(config, timeout))
    except TimeoutError:
        raise _Problem(f"broker {shown}: no answer within {timeout:g} s") from None
    except ClarionError as exc:
        # The broker masks a password in the userinfo but not one in the query string.
        raise _Problem(f"broker {shown}: {_scrub(str(exc), config.broker)}") from None
    return [f"broker {shown}: ok (connected, Pub/Sub link up, history script ran; "
            f"{elapsed * 1000:.1f} ms)"]


class _NoEvents:
    """The probe's broker handler: a check subscribes to nothing, so nothing arrives."""

    def on_publication(self, *args: Any) -> None:
        pass

    def on_join(self, *args: Any) -> None:
        pass

    def on_leave(self, *args: Any) -> None:
        pass


async def _probe_broker(config: Any, timeout: float) -> float:
    from clarion.broker import create_broker

    broker = create_broker(config.broker, **config.broker_options())
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            await broker.start(_NoEvents())
            await broker.history(PROBE_CHANNEL, limit=0, meta_ttl=PROBE_TTL)
            await broker.remove_history(PROBE_CHANNEL)
        return time.perf_counter() - started
    finally:
        await broker.close()


def _check_database(webhooks_db: str | None, settings: str | None,
                    timeout: float) -> list[str]:
    try:
        import django
        from django.core.exceptions import ImproperlyConfigured
    except ImportError:
        raise ConfigError("the webhook database check needs Django: "
                          "pip install 'clarion[django]'") from None
    if webhooks_db:
        path = Path(webhooks_db)
        if not path.exists():
            folder = path.resolve().parent
            if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
                raise _Problem(f"webhooks database {webhooks_db}: does not exist, and "
                               f"{folder} is not a directory this user can write to")
            return [f"webhooks database {webhooks_db}: not created yet; clarion serve "
                    "creates it and applies the migrations"]
        from clarion.django import embedded

        embedded.configure(webhooks_db, migrate=False)
        where = "webhook store"
        pending_is_problem = False  # clarion serve --webhooks-db migrates at start
    else:
        assert settings is not None
        os.environ["DJANGO_SETTINGS_MODULE"] = settings
        # As manage.py and gunicorn do: the project in the current directory is importable.
        # A console script's sys.path starts with its own bin directory instead.
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            django.setup()
        except ImportError as exc:
            raise ConfigError(f"Django settings {settings}: {exc}") from None
        except ImproperlyConfigured as exc:
            raise ConfigError(f"Django settings {settings}: {exc}") from None
        where = f"webhook store ({settings})"
        pending_is_problem = True
    return _database_state(where, pending_is_problem, timeout)


def _database_state(where: str, pending_is_problem: bool, timeout: float) -> list[str]:
    from django.apps import apps
    from django.core import checks
    from django.core.exceptions import ImproperlyConfigured
    from django.db import DatabaseError, connections
    from django.db.migrations.executor import MigrationExecutor

    from clarion.django.conf import webhook_settings

    try:
        alias = webhook_settings().DATABASE
    except ImproperlyConfigured as exc:
        raise ConfigError(f"{where}: CLARION['WEBHOOKS']: {exc}") from None
    connection = connections[alias]
    vendor = connection.vendor
    name = connection.settings_dict.get("NAME")
    db = f"{where}: database {alias!r} ({vendor} {name})"
    if vendor == "postgresql":
        # libpq waits for a host that drops packets for as long as the kernel retries (minutes);
        # the project's own connect_timeout, if it set one, stays.
        options = connection.settings_dict.setdefault("OPTIONS", {})
        options.setdefault("connect_timeout", max(1, math.ceil(timeout)))
    try:
        connection.ensure_connection()
        executor = MigrationExecutor(connection)
        leaves = [node for node in executor.loader.graph.leaf_nodes() if node[0] == "clarion"]
        # The plan includes what clarion's migrations depend on (contenttypes, auth, …).
        pending = [f"{m.app_label}.{m.name}" for m, _ in executor.migration_plan(leaves)]
    except DatabaseError as exc:
        raise _Problem(f"{db}: {str(exc).strip() or type(exc).__name__}") from None
    finally:
        connection.close()
    lines = [f"{db}: connected"]
    if pending:
        text = (f"{db}: {len(pending)} migration(s) that clarion needs not applied "
                f"({', '.join(pending)})")
        if pending_is_problem:
            raise _Problem(f"{text}; run: manage.py migrate clarion")
        lines.append(f"{text}; clarion serve applies them at start")
    else:
        lines.append(f"{db}: migrations applied")
    errors = [m for m in checks.run_checks(app_configs=[apps.get_app_config("clarion")])
              if m.level >= checks.ERROR]
    if errors:
        raise _Problem(f"{where}: " + "; ".join(f"{m.id}: {m.msg}" for m in errors))
    lines.append(f"{where}: Django system checks of clarion: ok")
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``clarion check`` flags: the hub's own, for what changes the effective settings."""
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file (as for serve)")
    parser.add_argument("--broker", help="the broker, as for serve (overrides the file)")
    parser.add_argument("--workers", type=int, help="hub processes, as for serve")
    parser.add_argument("--certfile", metavar="PEM", help="as for serve")
    parser.add_argument("--keyfile", metavar="PEM", help="as for serve")
    parser.add_argument("--webhooks-db", metavar="FILE",
                        help="also check this SQLite file of serve --webhooks-db")
    parser.add_argument("--settings", metavar="MODULE",
                        help="also check the webhook database of this Django settings module "
                             "(the project in the current directory, as for manage.py)")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for each service (default 10)")
    parser.add_argument("--quiet", action="store_true",
                        help="print problems and warnings only (on standard error), not the "
                             "results and effective settings")


def main(args: argparse.Namespace) -> int:
    """``clarion check`` from parsed arguments (see :func:`add_arguments`)."""
    if not args.timeout > 0:
        print("clarion check: --timeout must be more than 0 seconds", file=sys.stderr)
        return 2
    overrides = {name: getattr(args, name) for name in ("broker", "workers", "certfile",
                                                         "keyfile")}
    out = open(os.devnull, "w") if args.quiet else None  # noqa: SIM115 - closed below
    try:
        return check(args.config, overrides=overrides, webhooks_db=args.webhooks_db,
                     settings=args.settings, timeout=args.timeout, quiet=args.quiet, out=out)
    finally:
        if out is not None:
            out.close()
