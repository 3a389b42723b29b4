"""One process, one port: the Clarion hub, with this Django project mounted under ``/``.

The hub answers its own paths (``/connection/…``, ``/api/…``, ``/static/clarion.js``,
``/health``, ``/metrics``) and hands every other request to Django's WSGI application on a
small thread pool, the way ``clarion serve --webhooks-db`` mounts the webhook dashboard. Pages,
their WebSocket and the server API share one origin, so there is no CORS to set up.

In production, run the hub with ``clarion serve`` and Django under its own server (gunicorn,
uWSGI) behind nginx instead: see docs/topics/from-channels.md.
"""

from __future__ import annotations

import asyncio
from typing import Any

from django.conf import settings
from django.core.wsgi import get_wsgi_application

from clarion.hub.app import Hub
from clarion.hub.config import Config, load_config
from clarion.hub.wsgi import WsgiMount

WSGI_THREADS = 8


def hub_config() -> Config:
    """``hub.toml`` (the ``room`` namespace) with the address, broker and keys from the
    project's settings; ``CLARION_*`` environment variables set the rest
    (``CLARION_LOG_LEVEL=debug``, …)."""
    overrides: dict[str, Any] = {
        "host": settings.CHAT_HOST,
        "port": settings.CHAT_PORT,
        "broker": settings.CHAT_REDIS_URL or "memory",
        "api_key": settings.HUB_API_KEY,
        "token_hmac_secret": settings.HUB_TOKEN_SECRET,
    }
    if settings.CHAT_REDIS_URL:
        overrides["redis"] = settings.CLARION["REDIS"]
    return load_config(settings.CLARION["HUB"]["CONFIG"], overrides=overrides)


async def serve(config: Config) -> None:
    hub = Hub(config)
    mount = WsgiMount(get_wsgi_application(), host=config.host, port=config.port,
                      threads=WSGI_THREADS)
    # Checked after the hub's own paths, so "/" takes everything else.
    hub.router.add_prefix("/", mount)
    await hub.start()
    print(f"Chat on {hub.address}/  (Django and the Clarion hub in one process; "
          f"broker: {'redis' if settings.CHAT_REDIS_URL else 'memory'}, "
          f"database: {settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]})",
          flush=True)
    try:
        await hub.serve_until_stopped()
    finally:
        mount.close()


def run() -> None:
    try:
        import uvloop
    except ImportError:  # uvloop is a Clarion dependency except on Windows
        loop_factory = asyncio.new_event_loop
    else:
        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(hub_config()))
