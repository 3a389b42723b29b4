"""Django settings for the webhook tests (in-process and in worker subprocesses).

``default`` is PostgreSQL (a database of the tests' own, created fresh per session), ``sqlite``
a file. ``CLARION_TEST_WEBHOOKS`` (JSON) adds to ``CLARION['WEBHOOKS']`` in subprocesses.
"""

import json
import os

SECRET_KEY = "clarion-webhook-tests-secret-key-long-enough-for-checks"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
ROOT_URLCONF = "webhook_apps.urls"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.admin",
    "clarion.django",
    "webhook_apps.people",
    # tests/connect_site's settings build on these; whichever test module configures Django
    # first in a session, the connect tests find their app and models installed.
    "clarion.django.connect",
    "connect_site.pumpapp",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("CLARION_TEST_PG_DB", "clarion_tests"),
        "HOST": "127.0.0.1",
        "PORT": 5432,
        "USER": "postgres",
    },
    "sqlite": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("CLARION_TEST_SQLITE", "/tmp/clarion-webhook-tests.sqlite3"),
        "OPTIONS": {"timeout": 20},
    },
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
CLARION = {
    "WEBHOOKS": {
        "ALLOWED_NETWORKS": ["127.0.0.0/8", "::1/128"],
        **json.loads(os.environ.get("CLARION_TEST_WEBHOOKS", "{}")),
    }
}
LOGGING = {
    "version": 1,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"clarion": {"handlers": ["console"], "level": "WARNING"}},
}
