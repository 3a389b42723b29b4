"""A small Django project whose pages connect to the hub with no token: the hub asks
``clarion.django.proxy``'s views (mounted at ``/clarion/``) who the browser's session cookie
belongs to, which channels it may join, and answers its RPC calls.

Run it by hand (from tests/)::

    PROXY_SITE_DB=/tmp/proxy-site.sqlite3 python -m django migrate --settings proxy_site.settings
    PROXY_SITE_HUB=ws://127.0.0.1:8000/connection/websocket \
        gunicorn --chdir tests proxy_site.wsgi:application -b 127.0.0.1:8001

and a hub whose proxies point at http://127.0.0.1:8001/clarion/<proxy>/ with the header
``X-Clarion-Proxy-Secret: <PROXY_SITE_SECRET>`` (tests/test_django_proxy.py writes that
configuration). Open http://127.0.0.1:8001/, sign up, and the page's SDK connects: cookies go
to the hub because both run on 127.0.0.1 (cookies ignore ports).
"""

import os

SECRET_KEY = "clarion-proxy-site-secret-key-long-enough-for-django-checks"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
ROOT_URLCONF = "proxy_site.urls"
WSGI_APPLICATION = "proxy_site.wsgi.application"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "clarion.django",
    "proxy_site.apps.ProxySiteConfig",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
}]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("PROXY_SITE_DB", "/tmp/clarion-proxy-site.sqlite3"),
        "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE"},
    },
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# Fast hashing: the tests and the bench sign users up by the hundred.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
SESSION_ENGINE = "django.contrib.sessions.backends.db"

PROXY_SITE_HUB = os.environ.get("PROXY_SITE_HUB", "ws://127.0.0.1:8000/connection/websocket")
CLARION = {
    "PROXY": {
        "SECRET": os.environ.get("PROXY_SITE_SECRET", "proxy-site-shared-secret-" + "x" * 16),
        "ALLOWED_NETWORKS": os.environ.get("PROXY_SITE_NETWORKS", "127.0.0.1/32").split(","),
        "CONNECT_TTL": float(os.environ.get("PROXY_SITE_CONNECT_TTL", "3600")),
        "SUBSCRIBE_TTL": float(os.environ.get("PROXY_SITE_SUBSCRIBE_TTL", "600")),
        "CONNECT_INFO": "proxy_site.realtime.connect_info",
        "PERMISSIONS": {"news:*": "proxy_site.realtime.anyone_logged_in"},
        "PUBLISH": {"news:*": "proxy_site.realtime.NewsForm"},
        "RPC": {"settings.time": "proxy_site.realtime.server_time"},
    },
}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"clarion.django.proxy": {"handlers": ["console"], "level": "DEBUG"}},
}
