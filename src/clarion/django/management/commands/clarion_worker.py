"""``python manage.py clarion_worker``: deliver webhooks from the outbox."""

from __future__ import annotations

import logging
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from clarion.django import worker


class Command(BaseCommand):  # type: ignore[misc]
    help = ("Deliver webhooks: fan out new events, send due deliveries, retry failures; "
            "publish the outbox's realtime publications to the hub (CLARION['HUB'] or "
            "['BROKER']). Run as many as you like on PostgreSQL; one on SQLite.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--exit-when-idle", action="store_true",
                            help="exit once nothing is due (for scripts and tests)")
        parser.add_argument("--concurrency", type=int, default=None,
                            help="attempts in flight at once (default CONCURRENCY, 1000)")
        parser.add_argument("--metrics-port", type=int, default=None,
                            help="serve Prometheus /metrics on 127.0.0.1:PORT")
        parser.add_argument("--database", default=None,
                            help="database alias (default CLARION['WEBHOOKS']['DATABASE'])")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["verbosity"] > 1:
            logging.getLogger("clarion.webhooks").setLevel(logging.INFO)
        if options["metrics_port"]:
            import prometheus_client

            prometheus_client.start_http_server(options["metrics_port"], addr="127.0.0.1")
        done = worker.run_worker(exit_when_idle=options["exit_when_idle"],
                                 concurrency=options["concurrency"], using=options["database"])
        if options["verbosity"]:
            self.stdout.write(f"clarion_worker: {done.delivered} attempts made, "
                              f"{done.published} publications relayed")
