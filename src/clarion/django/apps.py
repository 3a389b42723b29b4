"""The Django application configuration of ``clarion.django`` (label ``clarion``)."""

from __future__ import annotations

from django.apps import AppConfig


class ClarionConfig(AppConfig):  # type: ignore[misc]  # Django ships no type information
    name = "clarion.django"
    label = "clarion"
    verbose_name = "Clarion"
    default_auto_field = "django.db.models.BigAutoField"
