"""The Django application configuration of ``clarion.django`` (label ``clarion``)."""

from __future__ import annotations

from django.apps import AppConfig
from django.db.backends.signals import connection_created


class ClarionConfig(AppConfig):  # type: ignore[misc]  # Django ships no type information
    name = "clarion.django"
    label = "clarion"
    verbose_name = "Clarion"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.core import checks

        from clarion.django.encryption import check_derived_key, check_keys
        from clarion.django.hooks import OPERATIONAL, hooks
        from clarion.django.proxy.checks import check_proxy
        from clarion.django.realtime.checks import check_realtime
        from clarion.django.security import check_middleware, check_sqlite
        from clarion.django.store import register_sqlite_match
        from clarion.django.tickets.checks import check_ticket_settings

        connection_created.connect(register_sqlite_match, dispatch_uid="clarion.sqlite_match")
        checks.register(check_keys, checks.Tags.security)
        checks.register(check_derived_key, checks.Tags.security, deploy=True)
        checks.register(check_middleware, checks.Tags.security)
        checks.register(check_sqlite, checks.Tags.database)
        checks.register(check_ticket_settings)
        checks.register(check_realtime)
        checks.register(check_proxy)
        for hook in OPERATIONAL:
            if hook.name not in hooks:
                hooks.register(hook)
