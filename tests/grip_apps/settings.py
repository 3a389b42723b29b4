"""Settings of the GRIP origin project (see the package docstring for the environment)."""

from __future__ import annotations

import os

from django.core.exceptions import ImproperlyConfigured

# which GRIP implementation: its middleware goes into MIDDLEWARE, grip_apps.grip imports it
GRIP_IMPLEMENTATIONS = {"django_grip": "django_grip", "clarion": "clarion.django.grip"}
GRIP_IMPL = os.environ.get("GRIP_IMPL", "django_grip")
if GRIP_IMPL not in GRIP_IMPLEMENTATIONS:
    raise ImproperlyConfigured(
        f"GRIP_IMPL must be one of {sorted(GRIP_IMPLEMENTATIONS)}, not {GRIP_IMPL!r}"
    )
GRIP_MODULE = GRIP_IMPLEMENTATIONS[GRIP_IMPL]

EVENTSTREAM = os.environ.get("GRIP_APPS_EVENTSTREAM", "") == "1"
if EVENTSTREAM and GRIP_IMPL != "django_grip":
    # django-eventstream imports django_grip itself (publish, request.grip)
    raise ImproperlyConfigured("django-eventstream needs GRIP_IMPL=django_grip")

SECRET_KEY = "grip-apps-test-secret-key-long-enough-for-hs256-signatures"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "grip_apps.urls"
WSGI_APPLICATION = "grip_apps.wsgi.application"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

# The README's advice: the GRIP middleware as early as possible.  The trace middleware
# outside it only logs what went in and out (the origin's log is printed when a test fails).
MIDDLEWARE = [
    "grip_apps.trace.TraceMiddleware",
    f"{GRIP_MODULE}.GripMiddleware",
]

GRIP_PROXIES = [
    {
        "key": os.environ.get("GRIP_KEY", "changeme"),
        "control_uri": os.environ.get("GRIP_CONTROL_URI", "http://127.0.0.1:5561"),
    }
]
GRIP_PROXY_REQUIRED = True

INSTALLED_APPS: list[str] = []
DATABASES: dict[str, dict[str, object]] = {}
if EVENTSTREAM:
    INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "django_eventstream"]
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ["GRIP_APPS_DB"],
            "OPTIONS": {"timeout": 30},
        }
    }
    EVENTSTREAM_STORAGE_CLASS = "django_eventstream.storage.DjangoModelStorage"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "INFO"},
}
