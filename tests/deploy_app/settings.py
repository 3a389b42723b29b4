"""Settings of the app behind nginx: grip_apps's, with this package's URLs."""

from __future__ import annotations

import os

from grip_apps.settings import *  # noqa: F403

os.environ["GRIP_IMPL"] = "clarion"  # grip_apps.grip reads it at import
GRIP_IMPL = "clarion"
GRIP_MODULE = "clarion.django.grip"
MIDDLEWARE = ["grip_apps.trace.TraceMiddleware", "clarion.django.grip.GripMiddleware"]
ROOT_URLCONF = "deploy_app.urls"
WSGI_APPLICATION = "deploy_app.wsgi.application"
# The demo page and /whoami are ordinary views; the GRIP views check request.grip_proxied
# themselves (myendpoint answers 501 when it is not).
GRIP_PROXY_REQUIRED = False
# Only nginx talks to gunicorn: its X-Forwarded-Proto says the client used https.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

DEPLOY_HUB_URL = os.environ.get("DEPLOY_HUB_URL", "http://127.0.0.1:8000")
DEPLOY_API_KEY = os.environ.get("DEPLOY_API_KEY", "")
