"""Settings for the chat example: the Django project of the Channels articles (rooms, login,
messages in a database), with Clarion as its realtime part.

Everything that changes between a laptop and a server comes from the environment:

``CHAT_HOST``, ``CHAT_PORT``
    where ``runchat`` listens (``127.0.0.1:8000``); the hub and the Django views share it.
``CHAT_DATABASE_URL``
    ``postgresql://user:password@host:5432/name`` for PostgreSQL; without it, SQLite in
    ``CHAT_DATA_DIR``.
``CHAT_REDIS_URL``
    ``redis://127.0.0.1:6379/0``: the hub's broker, and Django publishes and issues tickets
    straight into it (no HTTP hop). Without it the hub keeps everything in its own memory and
    Django talks to it over HTTP. ``CHAT_REDIS_PREFIX`` (``clarion-chat``) prefixes its keys.
``CHAT_DATA_DIR``
    the SQLite file and the generated secret key (``examples/chat/var``).
``CHAT_SECRET_KEY``
    Django's secret key; generated into ``CHAT_DATA_DIR`` when unset. The hub's API key and
    token secret are derived from it, so Django and the hub agree without more settings.

When the hub runs as a service of its own (production: ``clarion serve`` beside gunicorn,
nginx in front), ``runchat`` is not used and these say where it is and what it shares:

``CHAT_HUB_URL``
    the hub as browsers reach it, e.g. the site's public ``https://chat.example.com``
    (``{% clarion_script %}`` writes it into pages). Django calls the hub's API there too, so
    the proxy must send ``/api/`` to the hub. Its host name is added to ``ALLOWED_HOSTS``.
    Default ``http://CHAT_HOST:CHAT_PORT``.
``CHAT_HUB_API_KEY``, ``CHAT_HUB_TOKEN_SECRET``
    the hub's ``api_key`` and ``token_hmac_secret``; derived from the secret key when unset.
``CHAT_HUB_CA_FILE``
    a CA bundle (PEM) to check the hub's https certificate against, when it is signed by a
    private CA; unset: the usual public CAs.
``CHAT_BEHIND_HTTPS_PROXY``
    ``1`` when an https proxy (nginx) is the only way in: Django trusts its
    ``X-Forwarded-Proto: https`` (CSRF checks the https origin) and sends cookies ``Secure``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("CHAT_DATA_DIR", BASE_DIR / "var")).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)

CHAT_HOST = os.environ.get("CHAT_HOST", "127.0.0.1")
CHAT_PORT = int(os.environ.get("CHAT_PORT", "8000"))
CHAT_REDIS_URL = os.environ.get("CHAT_REDIS_URL", "")
CHAT_REDIS_PREFIX = os.environ.get("CHAT_REDIS_PREFIX", "clarion-chat")
CHAT_HUB_URL = os.environ.get("CHAT_HUB_URL") or f"http://{CHAT_HOST}:{CHAT_PORT}"


def _secret_key() -> str:
    env = os.environ.get("CHAT_SECRET_KEY")
    if env:
        return env
    path = DATA_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


def _derived(purpose: str) -> str:
    """One secret per purpose from SECRET_KEY: leaking the hub's API key reveals nothing of
    the session signing key."""
    return hmac.new(SECRET_KEY.encode(), purpose.encode(), hashlib.sha256).hexdigest()


def _database(url: str) -> dict[str, Any]:
    if not url:
        from clarion.django.embedded import sqlite_options

        return {"ENGINE": "django.db.backends.sqlite3", "NAME": str(DATA_DIR / "chat.sqlite3"),
                "OPTIONS": sqlite_options()}
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"CHAT_DATABASE_URL must be a postgresql:// URL, not {parts.scheme}://")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")) or "chat",
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
        # Connections are reused by the hub's WSGI threads between requests.
        "CONN_MAX_AGE": 60,
        "CONN_HEALTH_CHECKS": True,
    }


SECRET_KEY = _secret_key()
DEBUG = os.environ.get("CHAT_DEBUG", "").lower() in ("1", "true", "yes")
# With nginx in front, the hub's public address is the site's: its name is Django's too.
ALLOWED_HOSTS = ["127.0.0.1", "localhost", CHAT_HOST, urlsplit(CHAT_HUB_URL).hostname or ""]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "clarion.django",
    "chat",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "chatsite.urls"
WSGI_APPLICATION = "chatsite.wsgi.application"
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]
DATABASES = {"default": _database(os.environ.get("CHAT_DATABASE_URL", ""))}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
# The hub serves its own files (clarion.js) under /static/; Django's live elsewhere.
STATIC_URL = "/assets/"
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login/"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
X_FRAME_OPTIONS = "DENY"

# Only set this when nothing but the proxy can reach Django: a client talking to Django
# directly could claim https with the header.
if os.environ.get("CHAT_BEHIND_HTTPS_PROXY", "").lower() in ("1", "true", "yes"):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True

# The hub this project talks to: by default the one `runchat` starts in the same process.
HUB_API_KEY = os.environ.get("CHAT_HUB_API_KEY") or _derived("clarion-hub-api-key")
HUB_TOKEN_SECRET = os.environ.get("CHAT_HUB_TOKEN_SECRET") or _derived("clarion-hub-token-secret")
CLARION: dict[str, Any] = {
    "HUB": {
        "URL": CHAT_HUB_URL,
        "API_KEY": HUB_API_KEY,
        "TOKEN_HMAC_SECRET": HUB_TOKEN_SECRET,
        "TIMEOUT": 5.0,
        # The hub's channel options, read by Django when it publishes into Redis itself.
        "CONFIG": str(BASE_DIR / "hub.toml"),
    },
}
if os.environ.get("CHAT_HUB_CA_FILE"):
    CLARION["HUB"]["CA_FILE"] = os.environ["CHAT_HUB_CA_FILE"]
if CHAT_REDIS_URL:
    CLARION["BROKER"] = CHAT_REDIS_URL
    CLARION["REDIS"] = {"prefix": CHAT_REDIS_PREFIX}
# A ticket only has to live from the page render to the connection it opens.
REALTIME_TICKET_EXPIRE = 30

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "chat": {"handlers": ["console"], "level": "INFO"},
        "clarion": {"handlers": ["console"], "level": "WARNING"},
        "django.request": {"handlers": ["console"], "level": "ERROR"},
    },
}
