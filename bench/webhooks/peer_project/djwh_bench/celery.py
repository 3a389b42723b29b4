"""Celery app of the peer project (Redis broker from ``DJWH_BENCH_BROKER``)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djwh_bench.settings")

app = Celery("djwh_bench")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
