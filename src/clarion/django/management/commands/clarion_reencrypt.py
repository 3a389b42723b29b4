"""``python manage.py clarion_reencrypt [--check]``: move every encrypted value to the current key.

Run it after a key rotation (a new ``SECRET_KEY`` with the old one in ``SECRET_KEY_FALLBACKS``,
or a new first key in ``CLARION['ENCRYPTION_KEYS']``); once it reports nothing left on an old
key, the old key can be removed. Values stored plain (before encryption) are encrypted too.
Running it again changes nothing.

With ``clarion.django.connect`` installed, the client secrets and the tokens of connected
accounts and connections in progress are re-encrypted too (in their own database).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from django.apps import apps
from django.core.management.base import BaseCommand, CommandError, CommandParser

from clarion.django.conf import webhook_settings
from clarion.django.encryption import (
    Keyring,
    StoredSecrets,
    is_encrypted,
    keyring,
    rewrite_secrets,
    stored_secret,
    stored_secrets,
)
from clarion.errors import DecryptionError


class Command(BaseCommand):  # type: ignore[misc]
    help = ("Re-encrypt the stored listener signing secrets (and the connected accounts' "
            "tokens and client secrets) with the current encryption key (after a key "
            "rotation). --check only reports, and fails if a value cannot be decrypted with "
            "the configured keys.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--check", action="store_true",
                            help="change nothing; exit with status 1 if any value cannot be "
                                 "decrypted with the current keys")
        parser.add_argument("--database", default=None,
                            help="database alias (default CLARION['WEBHOOKS']['DATABASE'])")

    def handle(self, *args: Any, **options: Any) -> None:
        using = options["database"] or webhook_settings().DATABASE
        keys = keyring()
        counts: Counter[str] = Counter()
        broken: list[int] = []
        for rows in stored_secrets(using):
            for row in rows:
                kinds = [self._kind(keys, v) for v in row.values()]
                counts.update(kinds)
                if "undecryptable" in kinds:
                    broken.append(row.id)
                elif not options["check"] and set(kinds) - {"current", "empty"}:
                    self._rewrite(using, row)
        connect_broken = self._connect(keys, counts, check=options["check"])
        verb = "would re-encrypt" if options["check"] else "re-encrypted"
        self.stdout.write(
            f"clarion_reencrypt: {counts['current']} secrets already on the current key, "
            f"{counts['old key']} on an older key and {counts['plain']} stored plain "
            f"({verb} {counts['old key'] + counts['plain']}), "
            f"{counts['undecryptable']} undecryptable; keys: {keys.source}")
        if broken:
            shown = ", ".join(map(str, broken[:20])) + (" …" if len(broken) > 20 else "")
            raise CommandError(
                f"{counts['undecryptable']} secrets of {len(broken)} listeners (ids {shown}) "
                f"cannot be decrypted with the current keys: {keys.fix}")
        if connect_broken:
            shown = ", ".join(connect_broken[:20]) + (" …" if len(connect_broken) > 20 else "")
            raise CommandError(
                f"{counts['undecryptable']} values of connected accounts or clients ({shown}) "
                f"cannot be decrypted with the current keys: {keys.fix}")

    def _connect(self, keys: Keyring, counts: Counter[str], *, check: bool) -> list[str]:
        """Count (and unless ``check``, re-encrypt) the connect app's values; the rows no key
        decrypts, as ``table:id``."""
        if not apps.is_installed("clarion.django.connect"):
            return []
        from clarion.django.connect.reencrypt import MODELS, rewrite, stored_rows

        def fresh(value: str) -> str:
            if not value or keys.is_current(value):
                return value
            return keys.encrypt(keys.decrypt(value))

        broken: list[str] = []
        for model in MODELS:
            for rows in stored_rows(model):
                for row in rows:
                    kinds = [self._kind(keys, v) for v in row.values.values()]
                    counts.update(kinds)
                    if "undecryptable" in kinds:
                        broken.append(f"{row.table}:{row.id}")
                    elif not check and set(kinds) - {"current", "empty"}:
                        rewrite(model, row, fresh)
        return broken

    @staticmethod
    def _kind(keys: Keyring, value: str) -> str:
        if not value:
            return "empty"
        if not is_encrypted(value):
            return "plain"
        if keys.is_current(value):
            return "current"
        try:
            keys.decrypt(value)
        except DecryptionError:
            return "undecryptable"
        return "old key"

    @staticmethod
    def _rewrite(using: str, row: StoredSecrets) -> None:
        keys = keyring()

        def fresh(value: str) -> str:
            if not value or keys.is_current(value):
                return value
            return keys.encrypt(keys.decrypt(value))

        # A listener rotated meanwhile already has its new secret on the current key; read
        # it again so that its old one is moved too, without losing the new one.
        current: StoredSecrets | None = row
        while current is not None and not rewrite_secrets(using, current, fresh):
            current = stored_secret(using, current.id)
