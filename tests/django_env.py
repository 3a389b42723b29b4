"""One Django configuration for every in-process Django test (a process configures Django once).

``webhook_apps.settings`` is a superset: the GRIP unit tests override ``ROOT_URLCONF`` and
``MIDDLEWARE`` per test and touch no database; the webhook tests use both databases.
"""

from __future__ import annotations

import os

import django
from django.conf import settings


def configure() -> None:
    if settings.configured:
        return
    os.environ.setdefault("CLARION_TEST_PG_DB", f"clarion_tests_{os.getpid()}")
    os.environ.setdefault(
        "CLARION_TEST_SQLITE", f"/tmp/clarion-webhook-tests-{os.getpid()}.sqlite3")
    os.environ["DJANGO_SETTINGS_MODULE"] = "webhook_apps.settings"
    django.setup()
