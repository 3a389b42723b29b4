"""GRIP for Django views: a drop-in for django-grip 3.x, built on ``clarion.protocol.grip``.

Change ``django_grip`` to ``clarion.django.grip`` (and ``gripcontrol`` to
``clarion.django.grip`` for the formats) and keep the rest::

    MIDDLEWARE = ["clarion.django.grip.GripMiddleware", ...]
    GRIP_PROXIES = [{"control_uri": "http://localhost:5561", "key": "changeme"}]

    from clarion.django.grip import HttpStreamFormat, publish, set_hold_stream

    def stream(request):
        response = HttpResponse("[stream open]\\n")
        set_hold_stream(request, "test")      # or set_hold_stream(response, "test")
        return response

    publish("test", HttpStreamFormat("hello\\n"))   # returns at once; sent in the background

See docs/topics/django-grip.md. Settings are read when used, never at import.
"""

from clarion.django.grip.config import parse_grip_uri
from clarion.django.grip.formats import (
    Channel,
    HttpResponseFormat,
    HttpStreamFormat,
    WebSocketMessageFormat,
)
from clarion.django.grip.middleware import (
    GripData,
    GripInstruct,
    GripMiddleware,
    set_hold_keep_alive,
    set_hold_longpoll,
    set_hold_stream,
    set_meta,
    set_next_link,
    websocket_only,
)
from clarion.django.grip.publishing import publish, publish_flush
from clarion.django.grip.wscontext import WebSocketContext
from clarion.protocol.grip.wsevents import Event as WebSocketEvent

__all__ = [
    "Channel",
    "GripData",
    "GripInstruct",
    "GripMiddleware",
    "HttpResponseFormat",
    "HttpStreamFormat",
    "WebSocketContext",
    "WebSocketEvent",
    "WebSocketMessageFormat",
    "parse_grip_uri",
    "publish",
    "publish_flush",
    "set_hold_keep_alive",
    "set_hold_longpoll",
    "set_hold_stream",
    "set_meta",
    "set_next_link",
    "websocket_only",
]
