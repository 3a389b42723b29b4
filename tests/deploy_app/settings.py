"""Settings of the GRIP origin behind the hub's GRIP proxy: grip_apps's, with this package's
URLs. nginx sends /grip/ to the proxy, whose routes file names this origin; the rest of the
site is examples/chat (chat_settings.py), a project of its own in another gunicorn."""

from __future__ import annotations

import os

from grip_apps.settings import *  # noqa: F403

os.environ["GRIP_IMPL"] = "clarion"  # grip_apps.grip reads it at import
GRIP_IMPL = "clarion"
GRIP_MODULE = "clarion.django.grip"
MIDDLEWARE = ["grip_apps.trace.TraceMiddleware", "clarion.django.grip.GripMiddleware"]
ROOT_URLCONF = "deploy_app.urls"
WSGI_APPLICATION = "deploy_app.wsgi.application"
# The GRIP views check request.grip_proxied themselves (myendpoint answers 501 when it is not).
GRIP_PROXY_REQUIRED = False
