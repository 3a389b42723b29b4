"""Settings of the Clarion webhook benchmark project.

Env: ``CLARION_BENCH_DB`` (database name, default ``clarion_bench``).
"""

import os

SECRET_KEY = "bench-not-secret"
DEBUG = False
USE_TZ = True
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "clarion.django",
    "clarion_bench.apps.BenchConfig",
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("CLARION_BENCH_DB", "clarion_bench"),
        "HOST": "127.0.0.1",
        "PORT": 5432,
        "USER": "postgres",
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
CLARION = {"WEBHOOKS": {"ALLOWED_NETWORKS": ["127.0.0.0/8"]}}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
