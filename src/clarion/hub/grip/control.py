"""The publish API on ``control_port``: Pushpin's ``POST /publish/``.

Items are validated whole before any is published (a bad batch publishes nothing), then go
through the hub's broker like any publication, so native subscribers get them too
(``clarion.protocol.grip.mapping``). Authentication is optional, as Pushpin has none and binds
to localhost: ``control_basic_auth`` (``user:pass``; pubcontrol's ``Basic b'...'`` form is
understood), ``control_bearer_token`` (static), ``control_jwt_key`` (a Bearer JWT with ``exp``,
and ``iss`` when ``control_jwt_iss`` is set).
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import TYPE_CHECKING

from clarion.broker.base import PublishOptions
from clarion.errors import BrokerError, GripError, ReplyError
from clarion.hub.config import ChannelOptions
from clarion.hub.http import HttpProtocol, Request, Response
from clarion.hub.publishing import broker_request, publish_many
from clarion.hub.push import GRIP_ONLY_TAG, GRIP_TAG
from clarion.protocol.grip import items as grip_items
from clarion.protocol.grip import mapping
from clarion.protocol.grip import sig as grip_sig

if TYPE_CHECKING:
    from clarion.hub.grip.proxy import GripProxy


def _text(status: int, message: str, json: bool = False) -> Response:
    if json:
        return Response.json({"message": message.strip()}, status)
    return Response(status, message.encode(), "text/plain; charset=utf-8")


class ControlApi:
    def __init__(self, proxy: GripProxy) -> None:
        self.proxy = proxy
        self.hub = proxy.hub

    def _authorized(self, request: Request) -> bool:
        config = self.hub.config
        if not (config.control_basic_auth or config.control_bearer_token
                or config.control_jwt_key):
            return True
        auth = request.headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        scheme = scheme.lower()
        if scheme == "basic" and config.control_basic_auth:
            if value.startswith("b'") and value.endswith("'"):
                value = value[2:-1]  # pubcontrol on Python 3 sends str(bytes)
            try:
                given = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                return False
            return hmac.compare_digest(given, config.control_basic_auth.encode())
        if scheme == "bearer" and value:
            if config.control_bearer_token and hmac.compare_digest(
                    value.encode(), config.control_bearer_token.encode()):
                return True
            if config.control_jwt_key:
                try:
                    grip_sig.verify(value, self.proxy._key(config.control_jwt_key),
                                    config.control_jwt_iss or None)
                except GripError:
                    return False
                return True
        return False

    async def handle(self, request: Request, http: HttpProtocol) -> Response:
        path = request.path.rstrip("/")
        accept = request.headers.get("accept", "*/*")
        json = "application/json" in accept and "text/plain" not in accept
        if path == "":
            return _text(200, "Clarion GRIP API\n")
        if path not in ("/publish", "/recover"):
            return _text(404, f"no such endpoint: {request.path}\n", json)
        if request.method != "POST":
            resp = _text(405, "Method not allowed. Use POST.\n", json)
            resp.headers.append(("Allow", "POST"))
            return resp
        if not any(t in accept for t in ("*/*", "text/*", "text/plain", "application/json",
                                          "application/*")):
            return _text(406, "Not Acceptable: answers are text/plain or application/json\n")
        if not self._authorized(request):
            resp = _text(401, "Unauthorized\n", json)
            resp.headers.append(("WWW-Authenticate", 'Basic realm="clarion", Bearer'))
            return resp
        if path == "/recover":
            for hold in list(self.proxy.holds):
                if hold.next_link is not None:
                    self.proxy.spawn_recover(hold)
            return _text(200, "Updated\n", json)
        try:
            parsed = grip_items.parse_publish(request.body)
            options = [self._options(i, item) for i, item in enumerate(parsed)]
        except GripError as exc:
            self.hub.metrics.grip_errors += 1
            return _text(400, f"{exc}\n", json)
        # One broker call for the request's items (one Redis round trip), so they reach the
        # subscribers together and leave in one write each, as an /api/batch does.
        requests = [self.broker_request(item, opts)
                    for item, opts in zip(parsed, options, strict=True)]
        results = await publish_many(self.hub, requests)
        failed = [r for r in results if isinstance(r, BrokerError)]
        published = len(results) - len(failed)
        self.hub.metrics.grip_published += published
        if failed:
            # Redis away: say so within the broker's timeout, as the server API does, with
            # how many of the items went out.
            self.hub.log.warning("GRIP publish failed: broker unavailable", error=str(failed[0]))
            resp = _text(503, f"Service Unavailable: broker unavailable ({published} of "
                              f"{len(parsed)} items published)\n", json)
            resp.headers.append(("Retry-After", "1"))
            return resp
        return _text(200, "Published\n", json)

    def _options(self, index: int, item: grip_items.Item) -> ChannelOptions:
        try:
            return self.hub.rules.lenient_options(item.channel)
        except ReplyError:
            raise GripError(f"Invalid format: items[{index}]: channel {item.channel[:80]!r} "
                            "is not a valid channel name (1-255 printable characters)") from None

    def broker_request(self, item: grip_items.Item,
                       options: ChannelOptions) -> tuple[str, bytes, PublishOptions]:
        """An item as the broker publishes it: its native data (``null`` and no history for
        an item only GRIP clients can use), the item itself in a tag."""
        data = mapping.native_data(item)
        tags = {GRIP_TAG: grip_items.encode_item(item).decode()}
        if data is None:
            tags[GRIP_ONLY_TAG] = "1"
        return (item.channel, *broker_request(
            self.hub.config, options, data if data is not None else b"null", tags=tags,
            skip_history=data is None))
