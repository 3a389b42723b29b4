"""``manage.py runchat``: migrate, then serve the chat and the hub on one port."""

from __future__ import annotations

from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):  # type: ignore[misc]
    help = ("Bring the database up to date, then serve the chat and the Clarion hub on "
            "CHAT_HOST:CHAT_PORT (127.0.0.1:8000).")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--no-migrate", action="store_true",
                            help="do not run migrations first")

    def handle(self, *args: Any, **options: Any) -> None:
        if not options["no_migrate"]:
            call_command("migrate", verbosity=0)
        from chat.serving import run

        run()
