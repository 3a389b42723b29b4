"""A client held by an origin's instruction: a long-poll (``response``) or a ``stream``.

A hold subscribes to its channels in the hub's fan-out like any other subscriber. A long-poll
answers with the first ``http-response`` published to it (or with the origin's own response when
``Grip-Timeout`` passes) and the connection goes back to serving requests. A stream sends every
``http-stream`` content as a chunk until a ``close`` action, the client leaving, or the hub
stopping. Ids (``id``/``prev-id``) are tracked per channel for sequencing, ``Grip-Last`` and the
``build-id`` filter.
"""

from __future__ import annotations

import itertools
import json
import time
from typing import TYPE_CHECKING, Any

import jsonpatch

from clarion.errors import Disconnect, GripError
from clarion.hub.held import HeldConnection
from clarion.hub.http import HttpProtocol
from clarion.hub.push import EncodedPush
from clarion.hub.uni import ChunkedOutbound
from clarion.protocol.grip import filters as grip_filters
from clarion.protocol.grip.instruct import Channel, Instruct, KeepAlive, Link
from clarion.protocol.grip.items import HttpResponseFormat, HttpStreamFormat, Item

if TYPE_CHECKING:
    from clarion.hub.grip.proxy import Forward, GripProxy
    from clarion.hub.logs import Logger

CONTENT_FILTERS = ("build-id", "var-subst")
_ids = itertools.count(1)


class Sub:
    """One channel of a hold (or of a WebSocket-over-HTTP connection)."""

    __slots__ = ("content_filters", "filters", "name")

    def __init__(self, channel: Channel) -> None:
        self.name = channel.name
        self.filters = channel.filters
        self.content_filters = [f for f in channel.filters if f in CONTENT_FILTERS]

    def filtered(self, content: bytes, item: Item, meta: dict[str, str],
                 last_ids: dict[str, str | None], log: Logger) -> bytes | None:
        """What this subscriber gets after its filters, or None to skip the message (a
        filter that cannot run skips it too, and says why in the log)."""
        if not self.filters:
            return content
        try:
            return grip_filters.apply(self.filters, content, meta, item.meta, last_ids)
        except GripError as exc:
            log.warning("GRIP filter failed", channel=self.name, error=str(exc))
            return None


def bodiless(code: int) -> bool:
    """Answers that end at their header section (RFC 9110 §8.6, RFC 9112 §6.3)."""
    return code < 200 or code == 204 or code == 304


def response_bytes(code: int, reason: str, headers: list[tuple[str, str]], body: bytes,
                   chunked: bool = False, keep_alive: bool = True) -> bytes:
    lines = [f"HTTP/1.1 {code} {reason or _phrase(code)}"]
    lines.extend(f"{k}: {v}" for k, v in headers
                 if k.lower() not in ("content-length", "transfer-encoding", "connection"))
    no_body = bodiless(code)
    if not no_body:
        lines.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}")
    if not keep_alive:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    if no_body:
        return head  # a body here would be read as the start of the next answer
    if chunked:
        return head + (b"%x\r\n%b\r\n" % (len(body), body) if body else b"")
    return head + body


def _phrase(code: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "Unknown"


class GripHold(HeldConnection):
    __slots__ = (
        "activity",
        "channels",
        "deadline",
        "forward",
        "gone_link",
        "http",
        "id",
        "ka_at",
        "keep_alive",
        "last_ids",
        "link_base",
        "meta",
        "mode",
        "next_at",
        "next_link",
        "original",
        "proxy",
        "recovering",
        "sent",
        "single",
    )

    is_grip = True

    def __init__(self, proxy: GripProxy, http: HttpProtocol, forward: Forward,
                 inst: Instruct) -> None:
        hub = proxy.hub
        self.hub = hub
        self.proxy = proxy
        self.http = http
        assert http.transport is not None
        self.transport = http.transport
        self.out = ChunkedOutbound(self.transport, hub.flusher,
                                   hub.config.client_queue_max_size, self._slow)
        self.id = f"grip{next(_ids)}"
        self.forward = forward
        self.mode = inst.hold
        self.original = inst.response
        self.channels: dict[str, Sub] = {}
        self.single: Sub | None = None  # the only channel, when there is one (most holds)
        self.sent = False  # something went out since the last tick (idle keep-alives)
        self.last_ids: dict[str, str | None] = {}
        self.meta: dict[str, str] = {}
        self.keep_alive: KeepAlive | None = None
        self.next_link: Link | None = None
        self.link_base = forward.path  # relative next links resolve against the last one
        self.gone_link: str | None = None
        now = time.monotonic()
        self.activity = now
        self.ka_at = now
        self.deadline = 0.0
        self.next_at = 0.0
        self.recovering = False

    # -- setting up ---------------------------------------------------------------------------

    def start(self, inst: Instruct, since_seq: int) -> None:
        """Write the response head (stream), subscribe, then deliver what the hold may have
        missed while the origin was answering: all in one loop turn, so nothing slips by."""
        if self.mode == "stream":
            r = inst.response
            headers = r.headers
            if not any(k.lower() == "x-accel-buffering" for k, _ in headers):
                # An nginx in front without proxy_buffering off would hold the stream back
                # until its buffer fills; the origin may still say otherwise.
                headers = [*headers, ("X-Accel-Buffering", "no")]
            self.transport.write(response_bytes(r.code, r.reason, headers, r.body,
                                                chunked=True))
        self.apply(inst)
        self.proxy.holds.add(self)
        self.replay(since_seq, {c.name: c.prev_id for c in inst.channels})

    def apply(self, inst: Instruct) -> None:
        """Take (or, after a next link, retake) the instruction's channels, meta and timers."""
        now = time.monotonic()
        prefix = self.forward.route.prefix
        wanted = {prefix + c.name: c for c in inst.channels[:self.proxy.max_channels]}
        fanout = self.hub.fanout
        for full in list(self.channels):
            if full not in wanted:
                del self.channels[full]
                fanout.remove_key(full, self.id)
        for full, channel in wanted.items():
            self.channels[full] = Sub(channel)
            if channel.prev_id is not None or channel.name not in self.last_ids:
                self.last_ids[channel.name] = channel.prev_id
            fanout.add_target(full, self.id, self)
            self.hub.spawn(fanout.ensure_broker_subscription(full))
        for name in [n for n in self.last_ids if prefix + n not in wanted]:
            del self.last_ids[name]
        self.single = next(iter(self.channels.values())) if len(self.channels) == 1 else None
        self.meta.update(inst.meta)
        self.keep_alive = inst.keep_alive
        self.ka_at = now
        if self.mode == "response":
            self.deadline = now + inst.timeout
        self.next_link = inst.next_link
        self.next_at = now + inst.next_link.timeout if inst.next_link else 0.0
        if inst.gone_link is not None:
            self.gone_link = inst.gone_link

    def replay(self, since_seq: int, prev_ids: dict[str, str | None]) -> None:
        prefix = self.forward.route.prefix
        missed: list[tuple[int, EncodedPush]] = []
        for name, prev_id in prev_ids.items():
            missed.extend(self.proxy.recent.since(prefix + name, since_seq, prev_id))
        missed.sort(key=lambda pair: pair[0])
        for _, enc in missed:
            if self.out.closing or self.mode is None:
                break
            self.push(enc)

    # -- delivery -----------------------------------------------------------------------------

    def push(self, enc: EncodedPush) -> None:
        sub = self.single or self.channels.get(enc.channel)
        if sub is None:
            return
        if self.mode == "stream" and not sub.filters:
            # The common case, kept short: the same bytes for every subscriber.
            plain = enc.grip_plain_stream
            if plain is not None:
                if not self.out.closing:
                    self.out.queue(plain)
                    self.sent = True
                return
        self._push(enc, sub)

    def _push(self, enc: EncodedPush, sub: Sub) -> None:
        if self.out.closing or self.mode is None:
            return
        item = enc.grip
        formats = item.formats
        if formats is None:
            return
        fmt = formats.http_response if self.mode == "response" else formats.http_stream
        if fmt is None:
            return
        if fmt.action == "close":
            if self.mode == "stream":
                self.hub.loop.call_soon(self.finish_stream)
            return
        if fmt.action in ("hint", "refresh"):
            self.hub.loop.call_soon(self.proxy.spawn_recover, self)
            return
        if not self._in_sequence(sub, item):
            return
        if fmt.content_filters != sub.content_filters:
            return
        content = sub.filtered(fmt.content_bytes if isinstance(fmt, HttpStreamFormat)
                               else fmt.body_bytes, item, self.meta, self.last_ids, self.hub.log)
        if content is None:
            return
        if self.mode == "stream":
            self.out.queue(content)
            self.sent = True
        else:
            assert isinstance(fmt, HttpResponseFormat)
            if fmt.body_patch is not None:
                patched = self._patched(fmt.body_patch)
                if patched is None:
                    return
                content = patched
            # The hold's own answer headers (CORS, caching) stay; published ones replace them.
            published = fmt.header_pairs()
            replaced = {k.lower() for k, _ in published}
            headers = [h for h in self.original.headers if h[0].lower() not in replaced]
            self.respond(fmt.code, fmt.reason or "", headers + published, content)

    def _patched(self, patch: list[Any]) -> bytes | None:
        """``body-patch``: a JSON Patch (RFC 6902) applied to the origin's own response."""
        body = self.original.body
        ending = b"\r\n" if body.endswith(b"\r\n") else b"\n" if body.endswith(b"\n") else b""
        try:
            document = json.loads(body or b"null")
            return json.dumps(jsonpatch.apply_patch(document, patch),
                              separators=(",", ":")).encode() + ending
        except (ValueError, jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            self.hub.log.warning("GRIP body-patch not applicable; message skipped",
                                 path=self.forward.path, error=str(exc))
            return None

    def _in_sequence(self, sub: Sub, item: Item) -> bool:
        name = sub.name
        if item.prev_id is not None and not item.no_seq:
            last = self.last_ids.get(name)
            # A gap the proxy cannot fill: the origin knows what was missed.
            if last is not None and last != item.prev_id and (
                    self.next_link is not None or self.mode == "response"):
                self.hub.log.info("GRIP ids out of sequence: asking the origin",
                                  channel=name, expected=last, got=item.prev_id)
                self.hub.loop.call_soon(self.proxy.spawn_recover, self)
                return False
        if item.id is not None:
            self.last_ids[name] = item.id
        return True

    # -- endings ------------------------------------------------------------------------------

    def respond(self, code: int, reason: str, headers: list[tuple[str, str]],
                body: bytes) -> None:
        """Answer a long-poll and give the connection back to HTTP."""
        if self.mode is None:
            return
        self.mode = None
        self.transport.write(response_bytes(code, reason, headers, body))
        # Not now: this may run inside the fan-out's loop over this channel's subscribers.
        self.hub.loop.call_soon(self._leave)
        self.hub.loop.call_soon(self.http.release)

    def timed_out(self) -> None:
        r = self.original
        self.respond(r.code, r.reason, r.headers, r.body)

    def finish_stream(self) -> None:
        if self.mode is None or self.out.closing:
            return
        self.mode = None
        self.out.flush()
        self.transport.write(b"0\r\n\r\n")
        self._leave()
        self.http.release()

    def farewell(self, exc: Disconnect) -> None:
        if self.mode == "stream":
            self.out.write_now(b"0\r\n\r\n")
        elif self.mode == "response":
            r = self.original
            self.out.write_now(response_bytes(r.code, r.reason, r.headers, r.body,
                                              keep_alive=False))
        self.mode = None
        self._leave()

    def _leave(self) -> None:
        fanout = self.hub.fanout
        for full in self.channels:
            fanout.remove_key(full, self.id)
        self.channels.clear()
        self.single = None
        self.proxy.holds.discard(self)

    def data_received(self, data: bytes) -> None:
        # A client does not talk while held; keep what it pipelines for after a long-poll.
        self.http.hold(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.out.closing = True
        was_held = self.mode is not None
        self.mode = None
        self._leave()
        if was_held and self.gone_link is not None:
            self.proxy.spawn_gone(self.forward, self.gone_link)

    # -- housekeeping (once a second) ---------------------------------------------------------

    def tick(self, now: float) -> None:
        if self.mode is None or self.out.closing:
            return
        if self.sent:
            self.sent = False
            self.activity = now
        if self.mode == "response" and now >= self.deadline:
            self.timed_out()
            return
        ka = self.keep_alive
        if ka is not None and self.mode == "stream":
            since = self.ka_at if ka.mode == "interval" else max(self.activity, self.ka_at)
            if now - since >= ka.timeout:
                self.out.queue(ka.content)
                self.ka_at = now
        if self.next_at and now >= self.next_at and not self.recovering:
            self.next_at = 0.0
            self.proxy.spawn_recover(self)

