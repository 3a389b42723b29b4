"""``clarion`` on the command line: serve, demo, worker, manage, publish."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from clarion import __version__
from clarion.errors import ClarionError, ConfigError, HubError, HubReplyError

DEMO_CONFIG: dict[str, Any] = {
    "namespaces": {
        "chat": {
            "history_size": 100, "history_ttl": 300, "presence": True, "join_leave": True,
            "force_recovery": True, "allow_subscribe_for_client": True,
            "allow_publish_for_subscriber": True, "allow_history_for_subscriber": True,
            "allow_presence_for_subscriber": True,
        },
    },
}
DEMO_API_KEY = "demo"


def _loop_factory() -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def _serve(args: argparse.Namespace, demo: bool) -> int:
    from clarion.hub.app import Hub
    from clarion.hub.config import load_config

    overrides: dict[str, Any] = {"host": args.host, "port": args.port, "broker": args.broker,
                                 "log_level": args.log_level, "workers": args.workers}
    for name in ("grip_routes", "grip_host", "grip_port", "control_host", "control_port"):
        overrides[name] = getattr(args, name, None)
    for name in ("certfile", "keyfile"):
        overrides[name] = getattr(args, name, None)
    webhooks_db = getattr(args, "webhooks_db", None)
    if demo:
        overrides["demo"] = True
    config = load_config(args.config, overrides=overrides)
    slot: int | None = args.worker_slot
    if config.workers > 1 and slot is None:
        return _supervise(args, config)
    if webhooks_db:
        from clarion.django import embedded

        # Migrations run here, before the event loop; under a supervisor worker 0 alone runs
        # them, and the others start once it is ready.
        embedded.configure(webhooks_db, migrate=slot in (None, 0))
        embedded.register_types(args.webhook_types or "")
    if demo:
        # The demo runs with its chat namespace unless the file defines its own.
        config.namespaces = config.namespaces or {
            name: _options(opts) for name, opts in DEMO_CONFIG["namespaces"].items()}
        if not config.api_key:
            config.api_key = DEMO_API_KEY
    # Banners once per server: the first worker prints them for all.
    banners = slot in (None, 0)

    async def main() -> None:
        hub = Hub(config)
        link = None
        if slot is not None:
            from clarion.hub.workers import WorkerLink

            link = WorkerLink(slot, config.workers, args.worker_dir, args.worker_ready_fd,
                              args.worker_parent)
            link.prepare(hub)
        embedded = None
        if webhooks_db:
            embedded = _embed_webhooks(hub, webhooks_db, link)
        await hub.start()
        # Everything made so far (modules, config, the hub) lives as long as the process: keep
        # it out of the cycle collector's full passes, which otherwise stall the loop.
        gc.freeze()
        if link is not None:
            await link.start(hub)
        else:
            # SIGHUP's default ends the process at once, without the graceful shutdown:
            # `systemctl reload` (or a closed terminal) on a one-process hub would cut every
            # client. Only a supervisor (--workers) can replace a process without loss.
            asyncio.get_running_loop().add_signal_handler(
                signal.SIGHUP, lambda: hub.log.warning(
                    "SIGHUP ignored: one hub process cannot reload; serve with --workers N "
                    "for rolling restarts, or restart it"))
        if hub.grip is not None and banners:
            print(f"GRIP proxy on {hub.grip.address}, publish API on "
                  f"{hub.grip.control_address}/publish/", flush=True)
        if demo and banners:
            print(f"Clarion demo: open {hub.address}/ in two browser windows.\n"
                  f"Publish from a shell:  CLARION_API_KEY={config.api_key} clarion publish "
                  f"chat:lobby '{{\"text\": \"hello from the CLI\", \"user\": \"cli\"}}'",
                  flush=True)
        if webhooks_db and banners:
            print(f"Webhooks API and dashboard on {hub.address}/webhooks/ "
                  f"(database {webhooks_db}; add a user with: clarion manage --db "
                  f"{webhooks_db} createsuperuser)", flush=True)
        try:
            await hub.serve_until_stopped()
        finally:
            if link is not None:
                link.close()
            if embedded is not None:
                supervisor, task = embedded
                supervisor.stop()
                await asyncio.wait_for(task, 30)

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(main())
    return 0


def _supervise(args: argparse.Namespace, config: Any) -> int:
    """``--workers N``: this process only supervises N hub processes (clarion.hub.workers)."""
    from clarion.hub.logs import Logger
    from clarion.hub.workers import Supervisor, check_ports_free, worker_command

    if config.broker in ("memory", "memory://", ""):
        raise ConfigError(f"--workers {config.workers} needs a broker shared between processes: "
                          "use a Redis broker (--broker redis://127.0.0.1:6379/0, or "
                          "broker = \"redis://...\" in the config file); the memory broker "
                          "lives in one process")
    addresses = [(config.host, config.port)]
    if config.grip_routes:
        addresses += [(config.grip_host or config.host, config.grip_port),
                      (config.control_host, config.control_port)]
    check_ports_free(addresses)
    # A bad certificate is one clear error here, not N workers dying one after another.
    from clarion.hub.tls import server_context

    server_context(config.certfile, config.keyfile)
    log = Logger(fmt=config.log_format, level=config.log_level)
    supervisor = Supervisor([*worker_command(), *args.argv], config.workers,
                            config.seconds("shutdown_timeout"), log)
    return supervisor.run()


def _embed_webhooks(hub: Any, db: str, link: Any = None) -> Any:
    """Serve the built-in webhook app under /webhooks/ and run a delivery worker alongside.

    Under a supervisor (``link``), every worker serves the app but only worker 0 delivers:
    SQLite takes one delivery worker (it has no row locks to share claims with). The other
    workers wake it through its Unix socket when they commit an event."""
    import prometheus_client

    from clarion.django import embedded
    from clarion.django import hooks as django_hooks
    from clarion.django import worker as django_worker
    from clarion.hub.wsgi import WsgiMount

    hub.router.add_prefix("/webhooks/", WsgiMount(embedded.wsgi_app(), host=hub.config.host,
                                                   port=hub.config.port))
    embedded.attach_hub(hub)  # POST /api/event writes to this app's outbox
    if link is not None and link.slot != 0:
        django_hooks._wakers.append(lambda: link.wake_sibling(0))
        return None

    woken: list[Any] = []  # the current worker's waker, replaced on a restart

    def build() -> Any:
        for waker in woken:
            with contextlib.suppress(ValueError):
                django_hooks._wakers.remove(waker)
        # Publications from the outbox go straight into this hub's broker and fan-out.
        worker = django_worker.build(relay=django_worker.hub_relay(hub))
        woken[:] = [worker.store.wake]
        django_hooks._wakers.append(worker.store.wake)
        return worker

    def failed(exc: BaseException) -> None:
        hub.metrics.failures["webhook_worker"] += 1

    supervisor = django_worker.Supervisor(build, on_failure=failed)
    # The worker's own metrics (attempts, their durations, its errors) live in the default
    # registry; the hub's /metrics shows them too, so one scrape covers the process.
    hub.metrics.include(prometheus_client.REGISTRY, prefix="clarion_webhook_")
    task = asyncio.get_running_loop().create_task(supervisor.run())
    if link is not None:
        link.on_wake = lambda: [waker() for waker in woken]
        # A worker retired by a rolling restart stops delivering at once: its successor in
        # the same slot has started its own delivery worker on the same database.
        link.on_retire.append(supervisor.stop)
    return supervisor, task


def _worker(args: argparse.Namespace) -> int:
    _django(args)
    from clarion.django import worker

    if args.metrics_port:
        import prometheus_client

        prometheus_client.start_http_server(args.metrics_port, addr="127.0.0.1")
    made = worker.run(exit_when_idle=args.exit_when_idle, concurrency=args.concurrency)
    print(f"clarion worker: {made} attempts made", flush=True)
    return 0


def _manage(args: argparse.Namespace) -> int:
    _django(args)
    from django.core.management import execute_from_command_line

    execute_from_command_line(["clarion manage", *args.args])
    return 0


def _django(args: argparse.Namespace) -> None:
    """Django from ``--settings``/``$DJANGO_SETTINGS_MODULE``, else the built-in SQLite app."""
    settings_module = args.settings or os.environ.get("DJANGO_SETTINGS_MODULE")
    try:
        import django
    except ImportError:
        raise ConfigError("webhooks need Django: pip install 'clarion[django]'") from None
    if settings_module and not args.db:
        os.environ["DJANGO_SETTINGS_MODULE"] = settings_module
        # As manage.py finds the project it sits in: a console script's sys.path has its own
        # directory, not the working one, so `clarion worker --settings mysite.settings` run
        # from the project could not import it.
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())
        django.setup()
        return
    from clarion.django import embedded

    embedded.configure(args.db or embedded.DEFAULT_DB)


def _options(opts: dict[str, Any]) -> Any:
    import msgspec

    from clarion.hub.config import ChannelOptions

    return msgspec.convert(opts, type=ChannelOptions)


def _publish(args: argparse.Namespace) -> int:
    # Imported here: httpx is not needed to serve, and `clarion serve` starts without it.
    from clarion.client import Client

    try:
        data = json.loads(args.data)
    except json.JSONDecodeError:
        print(f"clarion publish: DATA must be JSON, e.g. '{{\"text\": \"hi\"}}' or "
              f"'\"{args.data}\"' for a string", file=sys.stderr)
        return 2
    key = args.api_key or os.environ.get("CLARION_API_KEY") or None
    try:
        client = Client(args.url, api_key=key, timeout=args.timeout)
    except ValueError as exc:
        print(f"clarion publish: {exc}", file=sys.stderr)
        return 2
    with client:
        try:
            result = client.publish(args.channel, data, idempotency_key=args.idempotency_key)
        except (TypeError, ValueError) as exc:  # the arguments, checked before sending
            print(f"clarion publish: {exc}", file=sys.stderr)
            return 2
        except HubReplyError as exc:
            print(f"clarion publish: error {exc.code}: {exc.message}", file=sys.stderr)
            for field in exc.fields:
                print(f"  {field.get('field')}: {field.get('problem')}", file=sys.stderr)
            return 1
        except HubError as exc:
            print(f"clarion {exc}", file=sys.stderr)  # the message starts with "publish: "
            return 1
    # The hub's own answer: no position for a channel without history.
    print(json.dumps({"offset": result.offset, "epoch": result.epoch} if result.epoch else {}))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clarion", description=__doc__)
    parser.add_argument("--version", action="version", version=f"clarion {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    for name, help_text in (("serve", "run the hub"),
                            ("demo", "run the hub with the demo chat page")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--host", help="address to bind (default 127.0.0.1)")
        p.add_argument("--port", type=int, help="port to bind (default 8000)")
        p.add_argument("--config", metavar="FILE", help="TOML configuration file")
        p.add_argument("--broker", help="memory (default), redis://host:port/db, or a dotted "
                       "path to a Broker class")
        p.add_argument("--workers", type=int, help="hub processes on the same port (default "
                       "1; more need a Redis broker)")
        # Internal: how the supervisor of --workers starts each worker (clarion.hub.workers).
        p.add_argument("--worker-slot", type=int, help=argparse.SUPPRESS)
        p.add_argument("--worker-dir", help=argparse.SUPPRESS)
        p.add_argument("--worker-ready-fd", type=int, help=argparse.SUPPRESS)
        p.add_argument("--worker-parent", type=int, help=argparse.SUPPRESS)
        p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
        p.add_argument("--certfile", metavar="PEM",
                       help="serve TLS (https, wss) with this certificate chain")
        p.add_argument("--keyfile", metavar="PEM",
                       help="the certificate's private key (if not in --certfile)")
        if name == "serve":
            p.add_argument("--demo", action="store_true", help="also serve the demo page")
            g = p.add_argument_group("GRIP proxy (Pushpin-compatible)")
            g.add_argument("--grip-routes", metavar="FILE",
                           help="Pushpin routes file; turns the GRIP proxy on")
            g.add_argument("--grip-host", help="address for GRIP clients (default: --host)")
            g.add_argument("--grip-port", type=int, help="port for GRIP clients (default 7999)")
            g.add_argument("--control-host", help="publish API address (default 127.0.0.1)")
            g.add_argument("--control-port", type=int,
                           help="publish API port (default 5561)")
            w = p.add_argument_group("webhooks without a Django project")
            w.add_argument("--webhooks-db", metavar="FILE",
                           help="SQLite file; serves the webhook API and dashboard under "
                                "/webhooks/ and runs a delivery worker")
            w.add_argument("--webhook-types", metavar="A,B",
                           help="event types (hook names) that API clients may send and "
                                "subscribe to, comma-separated")

    for name, help_text in (("worker", "deliver webhooks (the worker)"),
                            ("manage", "run a Django management command on the webhook app")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--settings", help="Django settings module (default "
                                          "$DJANGO_SETTINGS_MODULE, else the built-in app)")
        p.add_argument("--db", help="SQLite file of the built-in app (default "
                                    "clarion-webhooks.sqlite3)")
        if name == "worker":
            p.add_argument("--exit-when-idle", action="store_true",
                           help="exit once nothing is due")
            p.add_argument("--concurrency", type=int, help="attempts in flight at once")
            p.add_argument("--metrics-port", type=int,
                           help="serve Prometheus /metrics on 127.0.0.1:PORT")
        else:
            p.add_argument("args", nargs=argparse.REMAINDER, help="command and its arguments")

    from clarion import check

    check.add_arguments(sub.add_parser("check", help="validate the configuration and reach "
                                       "its broker and database (like nginx -t)"))
    p = sub.add_parser("publish", help="publish DATA (JSON) into CHANNEL through the API")
    p.add_argument("channel")
    p.add_argument("data", help="JSON, e.g. '{\"text\": \"hi\"}'")
    p.add_argument("--url", default=os.environ.get("CLARION_URL", "http://127.0.0.1:8000"))
    p.add_argument("--api-key", help="default: $CLARION_API_KEY")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    p.add_argument("--idempotency-key", metavar="KEY",
                   help="publish KEY into CHANNEL once: a repeat within 300 s is not "
                        "published again (safe to retry)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    args.argv = argv  # for the workers of --workers, started with the same arguments
    try:
        if args.command == "serve":
            return _serve(args, demo=args.demo)
        if args.command == "demo":
            return _serve(args, demo=True)
        if args.command == "worker":
            return _worker(args)
        if args.command == "manage":
            return _manage(args)
        if args.command == "check":
            from clarion import check

            return check.main(args)
        return _publish(args)
    except ConfigError as exc:
        print(f"clarion: {exc}", file=sys.stderr)
        return 2
    except ClarionError as exc:
        print(f"clarion: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
