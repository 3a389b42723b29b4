"""The GRIP implementation the views use, chosen by ``GRIP_IMPL`` (imported lazily: only the
chosen implementation's module is imported).

Both expose the same names: ``GripMiddleware``, ``set_hold_stream``, ``set_hold_longpoll``,
``publish``, ``websocket_only`` and the formats ``HttpStreamFormat``, ``HttpResponseFormat``,
``WebSocketMessageFormat``.
"""

from __future__ import annotations

from django.conf import settings

IMPL: str = settings.GRIP_IMPL  # settings reads GRIP_IMPL from the environment and checks it
MODULE: str = settings.GRIP_MODULE

if IMPL == "django_grip":
    from django_grip import (
        GripMiddleware,
        publish,
        set_hold_longpoll,
        set_hold_stream,
        websocket_only,
    )
    from gripcontrol import HttpResponseFormat, HttpStreamFormat, WebSocketMessageFormat
else:
    from clarion.django.grip import (  # type: ignore[import-not-found,unused-ignore]
        GripMiddleware,
        HttpResponseFormat,
        HttpStreamFormat,
        WebSocketMessageFormat,
        publish,
        set_hold_longpoll,
        set_hold_stream,
        websocket_only,
    )

__all__ = [
    "IMPL",
    "MODULE",
    "GripMiddleware",
    "HttpResponseFormat",
    "HttpStreamFormat",
    "WebSocketMessageFormat",
    "publish",
    "set_hold_longpoll",
    "set_hold_stream",
    "websocket_only",
]
