"""The Django application ``clarion.django.connect`` (label ``clarion_connect``)."""

from __future__ import annotations

from django.apps import AppConfig


class ConnectConfig(AppConfig):  # type: ignore[misc]  # Django ships no type information
    name = "clarion.django.connect"
    label = "clarion_connect"
    verbose_name = "Clarion connected accounts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.core import checks

        from clarion.django.hooks import ACCOUNT_EVENTS, hooks

        from .checks import check_connect_settings

        checks.register(check_connect_settings)
        for hook in ACCOUNT_EVENTS:
            if hook.name not in hooks:
                hooks.register(hook)
