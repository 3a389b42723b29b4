"""A Django site that uses ``clarion.django.connect`` and the seed's WebPump example view.

In-process tests (tests/test_django_connect.py) load it as ``DJANGO_SETTINGS_MODULE``; it is the
webhook tests' settings (tests/webhook_apps/settings.py) plus the connect app, the seed's
``PumpModel`` app, its URLs, a login page and a test email backend.

Run it as a server against a provider (what tests/test_connect_flow.py does):

    cd tests
    CLARION_TEST_PG_DB=<a database migrated for it> \\
    CONNECT_SITE_CONNECT='{"ALLOWED_NETWORKS": ["127.0.0.0/8"], "ALLOW_HTTP": true}' \\
    CONNECT_SITE_EMAIL_DIR=/tmp/connect-mails \\
    DJANGO_SETTINGS_MODULE=connect_site.settings \\
    ../.venv/bin/python -m django migrate && \\
    ../.venv/bin/python -m django runserver 127.0.0.1:8123 --noreload

(any WSGI server works: ``connect_site.wsgi:application``). Then, in a browser: sign in at
``/login/`` (create a user with ``python -m django createsuperuser`` or in the test), open
``/accounts/connect/alice@127.0.0.1:<provider port>/`` (or POST the form at
``/accounts/connect/``), approve on the provider, and land on ``/accounts/connect/accounts/``.
The seed's example is at ``/pump/<webfinger>/`` with its callback at ``/oauth/authorize``.

URLs (keep them stable, the end-to-end tests use them): ``/login/``, ``/logout/``,
``/accounts/`` + clarion.django.connect.urls, ``/pump/<webfinger>/``, ``/oauth/authorize``,
``/profile/`` and ``/profile/<webfinger>/`` (the seed's landing pages), ``/error``.
``CONNECT_SITE_CONNECT`` (JSON) is ``CLARION["CONNECT"]``; with ``CONNECT_SITE_EMAIL_DIR`` set,
emails are written there as files (Django's file backend), else kept in memory (locmem).
"""

import json
import os

from webhook_apps.settings import *  # noqa: F403
from webhook_apps.settings import CLARION as _CLARION
from webhook_apps.settings import INSTALLED_APPS as _APPS

# The webhook tests' settings install the connect app and pumpapp as well (so a session whose
# first Django module is another one still has them): nothing to add here.
INSTALLED_APPS = list(_APPS)
ROOT_URLCONF = "connect_site.urls"
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "DIRS": [os.path.join(os.path.dirname(__file__), "templates")],
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/accounts/connect/accounts/"
CLARION = {**_CLARION, "CONNECT": json.loads(os.environ.get("CONNECT_SITE_CONNECT", "{}"))}
if os.environ.get("CONNECT_SITE_EMAIL_DIR"):
    EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
    EMAIL_FILE_PATH = os.environ["CONNECT_SITE_EMAIL_DIR"]
else:
    EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
DEFAULT_FROM_EMAIL = "connect-site@example.com"
