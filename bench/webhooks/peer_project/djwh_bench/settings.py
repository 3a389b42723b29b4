"""Settings of the django-webhook peer project (PostgreSQL + Celery on Redis), per its README.

Env: ``DJWH_BENCH_DB`` (database name, default ``djwebhook_bench``), ``DJWH_BENCH_BROKER``
(default ``redis://127.0.0.1:6379/15``).
"""

import os

SECRET_KEY = "bench-not-secret"
DEBUG = False
USE_TZ = True
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django_webhook",
    "orders",
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("DJWH_BENCH_DB", "djwebhook_bench"),
        "HOST": "127.0.0.1",
        "PORT": 5432,
        "USER": "postgres",
        "CONN_MAX_AGE": None,  # Celery workers keep their connection, as a real deployment would
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

# django-webhook: webhooks on every create/update/delete of these models.  Defaults kept as
# shipped (STORE_EVENTS=True: a WebhookEvent row per delivery; USE_CACHE=True: topic lookups
# cached per process for 1 minute).
DJANGO_WEBHOOK = {"MODELS": ["orders.Order"]}

CELERY_BROKER_URL = os.environ.get("DJWH_BENCH_BROKER", "redis://127.0.0.1:6379/15")
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Celery's Django fixup closes every DB connection before and after each task unless
# CELERY_DB_REUSE_MAX is set (then once per that many tasks): a new PostgreSQL backend per
# webhook.  The benchmark sets it (DJWH_BENCH_DB_REUSE_MAX) to give the peer its best case;
# `webhook_delivery.py --peer-as-shipped` leaves Celery's default.
if os.environ.get("DJWH_BENCH_DB_REUSE_MAX"):
    CELERY_DB_REUSE_MAX = int(os.environ["DJWH_BENCH_DB_REUSE_MAX"])

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
