"""ASGI entry point: WebSocket consumer + a tiny HTTP publish endpoint inside the server.

The publish endpoint takes the same bodies as the hub's server API so the harness is the same:
``POST /api/publish {"channel":..., "data":...}`` and
``POST /api/batch {"commands":[{"publish":{...}}, ...]}``; each publication becomes one
``group_send("fan", ...)`` whose text is a Centrifugo-style push (so the load clients count
the same ``"pub":`` pattern).  ``GET /health`` answers 200.
"""

import json
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "channels_app.settings")

import django

django.setup()

from channels.layers import get_channel_layer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from .consumers import GROUP, FanConsumer  # noqa: E402


def _push(channel: str, data: object) -> str:
    return json.dumps({"push": {"channel": channel, "pub": {"data": data}}}, separators=(",", ":"))


async def _respond(send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def publish_app(scope, receive, send) -> None:
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    p = scope["path"]
    if scope["method"] == "POST" and p in ("/api/publish", "/api/batch"):
        req = json.loads(body)
        cmds = req["commands"] if p == "/api/batch" else [{"publish": req}]
        layer = get_channel_layer()
        for c in cmds:
            pub = c["publish"]
            await layer.group_send(
                GROUP, {"type": "fan.message", "text": _push(pub["channel"], pub["data"])}
            )
        if p == "/api/batch":
            out = json.dumps({"replies": [{"publish": {}} for _ in cmds]}).encode()
        else:
            out = b'{"result":{}}'
        await _respond(send, 200, out)
    else:
        await _respond(send, 200, b'{"status":"ok"}')


application = ProtocolTypeRouter(
    {
        "http": publish_app,
        "websocket": URLRouter([path("connection/websocket", FanConsumer.as_asgi())]),
    }
)
