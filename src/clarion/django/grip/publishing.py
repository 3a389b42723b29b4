"""``publish()``: send items to every GRIP proxy (``GRIP_PROXIES``, ``GRIP_URL``) and publish
server (``PUBLISH_SERVERS``), without making the request wait for them.

The request thread only builds and queues the item. One background thread, started on the
first publish, posts ``{"items": [...]}`` to ``<control_uri>/publish/`` (pubcontrol's shape, so
Pushpin and Clarion's proxy take it), in batches per target and in publish order. A target that
is down is retried with exponential backoff until an item has waited
``GRIP_PUBLISH_RETRY_SECONDS`` (default 30); then the item is dropped with an error log naming
its channel. A target that refuses an item (4xx) has the batch re-sent one item at a time, so
only the refused item is dropped. At most ``GRIP_PUBLISH_QUEUE_SIZE`` items wait per target;
beyond that ``publish()`` raises instead of losing messages quietly. ``publish_flush()`` waits
until the queue is empty; it runs at interpreter exit too (for at most ``EXIT_FLUSH_SECONDS``).
"""

from __future__ import annotations

import atexit
import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec
from django.core.exceptions import ImproperlyConfigured

from clarion.django.grip import config
from clarion.django.grip.config import Target
from clarion.django.grip.formats import export_formats
from clarion.errors import PublishError
from clarion.protocol.grip import items, sig

logger = logging.getLogger("clarion.django.grip")

Callback = Callable[[bool, str], object]

MAX_BATCH_ITEMS = 100
MAX_BATCH_BYTES = 256 * 1024          # Pushpin takes bodies up to 1,000,000 bytes
BACKOFF_FIRST = 0.2
BACKOFF_MAX = 5.0
EXIT_FLUSH_SECONDS = 5.0
HTTP_TIMEOUT = httpx.Timeout(10.0, connect=3.0)
RETRY_STATUSES = frozenset({408, 425, 429})   # and every 5xx

_encoder = msgspec.json.Encoder()


class _Done:
    """Calls a publish callback once every target has a result for the item."""

    __slots__ = ("callback", "error", "lock", "waiting")

    def __init__(self, targets: int, callback: Callback) -> None:
        self.waiting = targets
        self.callback = callback
        self.error = ""
        self.lock = threading.Lock()

    def report(self, ok: bool, message: str = "") -> None:
        with self.lock:
            if not ok and not self.error:
                self.error = message or "publish failed"
            self.waiting -= 1
            if self.waiting:
                return
        try:
            self.callback(not self.error, self.error)
        except Exception:
            logger.exception("publish callback %r raised", self.callback)


@dataclass(slots=True)
class _Entry:
    channel: str
    encoded: bytes
    queued: float
    deadline: float
    done: _Done | None = None

    def describe(self) -> str:
        text = self.encoded.decode("utf-8", "replace")
        return text if len(text) <= 300 else text[:300] + "…"


@dataclass(slots=True)
class _Queue:
    target: Target
    pending: deque[_Entry] = field(default_factory=deque)
    next_attempt: float = 0.0
    failures: int = 0
    singles: int = 0        # items to send one per request (isolating a refused one)

    def batch(self) -> list[_Entry]:
        if self.singles:
            return [self.pending[0]]
        out: list[_Entry] = []
        size = 0
        for entry in self.pending:
            if out and (len(out) >= MAX_BATCH_ITEMS
                        or size + len(entry.encoded) > MAX_BATCH_BYTES):
                break
            out.append(entry)
            size += len(entry.encoded)
        return out


class _Outcome:
    OK = "ok"
    RETRY = "retry"
    REFUSED = "refused"


_signers: dict[tuple[str, bytes], sig.Signer] = {}
_signers_lock = threading.Lock()


def auth_header(target: Target) -> str | None:
    """pubcontrol's rule: ``iss`` + ``key`` → ``Bearer <JWT {iss, exp: now+3600}>`` (HS256 for
    a secret), a ``key`` alone → ``Bearer <key>``, no key → no ``Authorization``."""
    if target.key is None:
        return None
    if target.iss:
        key = target.key.encode() if isinstance(target.key, str) else target.key
        with _signers_lock:
            signer = _signers.get((target.iss, key))
            if signer is None:
                signer = _signers[(target.iss, key)] = sig.Signer(target.iss, key)
            return "Bearer " + signer.token()
    if isinstance(target.key, bytes):
        try:
            return "Bearer " + target.key.decode("ascii")
        except UnicodeDecodeError:
            raise ImproperlyConfigured(
                f"publish target {target.uri}: a key without an issuer is sent as a static "
                "Bearer token and must be text; set control_iss (or iss) to sign a JWT with a "
                "binary key") from None
    return "Bearer " + target.key


def body(encoded_items: list[bytes]) -> bytes:
    return b'{"items":[' + b",".join(encoded_items) + b"]}"


def _post(client: httpx.Client, target: Target, payload: bytes) -> tuple[str, str]:
    """(outcome, what happened) for one POST."""
    headers = {"Content-Type": "application/json"}
    auth = auth_header(target)
    if auth:
        headers["Authorization"] = auth
    try:
        response = client.post(target.publish_url, content=payload, headers=headers)
    except httpx.HTTPError as exc:
        return _Outcome.RETRY, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if 200 <= response.status_code < 300:
        return _Outcome.OK, ""
    detail = f"HTTP {response.status_code} {response.text.strip()[:200]!r}"
    if response.status_code >= 500 or response.status_code in RETRY_STATUSES:
        return _Outcome.RETRY, detail
    return _Outcome.REFUSED, detail


class Publisher:
    """The queue and its sender thread. One per process (see ``_publisher()``)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queues: dict[Target, _Queue] = {}
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._sync_client: httpx.Client | None = None
        self._sync_lock = threading.Lock()
        self._exit_hook = False

    # -- request side ------------------------------------------------------------------------

    def enqueue(self, targets: list[Target], channel: str, encoded: bytes,
                retry_seconds: float, queue_size: int, callback: Callback | None) -> None:
        for target in targets:
            auth_header(target)  # a bad key is the caller's error, now, not the thread's
        now = time.monotonic()
        done = _Done(len(targets), callback) if callback is not None else None
        with self._cond:
            if self._stopping:
                raise PublishError("publishing has stopped (the process is exiting)")
            full = [t.uri for t in targets
                    if t in self._queues and len(self._queues[t].pending) >= queue_size]
            if full:
                logger.error("publish queue full for %s (%d items waiting); not publishing to "
                             "channel %r: %s", ", ".join(full), queue_size, channel,
                             encoded[:300].decode("utf-8", "replace"))
                raise PublishError(f"publish queue full for {', '.join(full)} ({queue_size} "
                                   f"items waiting); channel {channel!r} not published")
            for target in targets:
                queue = self._queues.get(target)
                if queue is None:
                    queue = self._queues[target] = _Queue(target)
                queue.pending.append(_Entry(channel, encoded, now, now + retry_seconds, done))
            self._start()
            self._cond.notify_all()

    def send_now(self, targets: list[Target], channel: str, encoded: bytes) -> None:
        """Publish to every target before returning; PublishError names every failure."""
        with self._sync_lock:
            if self._sync_client is None:
                self._sync_client = httpx.Client(timeout=HTTP_TIMEOUT)
            client = self._sync_client
        failures = []
        for target in targets:
            outcome, detail = _post(client, target, body([encoded]))
            if outcome != _Outcome.OK:
                failures.append(f"{target.publish_url}: {detail}")
        if failures:
            raise PublishError(f"publishing to channel {channel!r} failed: "
                               + "; ".join(failures))

    def pending(self) -> int:
        with self._cond:
            return sum(len(q.pending) for q in self._queues.values())

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued item was sent or given up; False if ``timeout`` ran out."""
        with self._cond:
            return self._cond.wait_for(
                lambda: not any(q.pending for q in self._queues.values()), timeout)

    def close(self, timeout: float = EXIT_FLUSH_SECONDS) -> bool:
        """Flush for at most ``timeout`` seconds, then stop; what is left is logged."""
        flushed = self.flush(timeout)
        with self._cond:
            self._stopping = True
            left = [(q.target, e) for q in self._queues.values() for e in q.pending]
            for queue in self._queues.values():
                queue.pending.clear()
            self._cond.notify_all()
        for target, entry in left:
            logger.error("not published to %s (process exiting): channel %r item %s",
                         target.publish_url, entry.channel, entry.describe())
            if entry.done is not None:
                entry.done.report(False, "process exiting")
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=1.0)
        with self._sync_lock:
            if self._sync_client is not None:
                self._sync_client.close()
                self._sync_client = None
        return flushed

    # -- the sender thread -------------------------------------------------------------------

    def _start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        # The client is made here, in the publishing thread: httpx imports its transport
        # lazily, and an import running on the sender thread when a server forks (gunicorn)
        # would leave the child a half-imported module.
        client = httpx.Client(timeout=HTTP_TIMEOUT)
        self._thread = threading.Thread(target=self._run, args=(client,),
                                        name="clarion-grip-publish", daemon=True)
        self._thread.start()
        if not self._exit_hook:
            self._exit_hook = True
            atexit.register(self.close)

    def _ready(self) -> list[tuple[_Queue, list[_Entry]]] | None:
        """Batches due now, waiting until one is; None when stopping with nothing left."""
        while True:
            now = time.monotonic()
            due = [(q, q.batch()) for q in self._queues.values()
                   if q.pending and q.next_attempt <= now]
            if due:
                return due
            if self._stopping:
                return None
            waits = [q.next_attempt - now for q in self._queues.values() if q.pending]
            self._cond.wait(timeout=min(waits) if waits else None)

    def _run(self, client: httpx.Client) -> None:
        with client:
            while True:
                with self._cond:
                    due = self._ready()
                if due is None:
                    return
                for queue, batch in due:
                    try:
                        outcome, detail = _post(client, queue.target,
                                                body([e.encoded for e in batch]))
                    except Exception as exc:
                        # A bug here must not stop every later publish: log, treat as retry.
                        logger.exception("publishing to %s failed unexpectedly",
                                         queue.target.publish_url)
                        outcome, detail = _Outcome.RETRY, repr(exc)
                    with self._cond:
                        self._settle(queue, batch, outcome, detail)
                        self._cond.notify_all()

    def _settle(self, queue: _Queue, batch: list[_Entry], outcome: str, detail: str) -> None:
        now = time.monotonic()
        url = queue.target.publish_url
        if not queue.pending or queue.pending[0] is not batch[0]:
            return  # cleared by close() meanwhile
        if outcome == _Outcome.OK:
            if queue.failures:
                logger.warning("publishing to %s works again after %d failed attempts",
                               url, queue.failures)
            queue.failures = 0
            queue.next_attempt = 0.0
            queue.singles = max(0, queue.singles - len(batch))
            for _ in batch:
                entry = queue.pending.popleft()
                if entry.done is not None:
                    entry.done.report(True)
            return
        if outcome == _Outcome.REFUSED:
            if len(batch) > 1:
                queue.singles = len(batch)   # find which item is refused
                return
            entry = queue.pending.popleft()
            queue.singles = max(0, queue.singles - 1)
            logger.error("%s refused an item (%s); dropped channel %r item %s",
                         url, detail, entry.channel, entry.describe())
            if entry.done is not None:
                entry.done.report(False, f"{url}: {detail}")
            return
        queue.failures += 1
        if queue.failures == 1:
            logger.warning("publishing to %s failed (%s); retrying", url, detail)
        kept: deque[_Entry] = deque()
        for entry in queue.pending:
            if entry.deadline > now:
                kept.append(entry)
                continue
            logger.error("giving up publishing to %s after %.1f s (%s): channel %r item %s",
                         url, now - entry.queued, detail, entry.channel, entry.describe())
            if entry.done is not None:
                entry.done.report(False, f"{url}: {detail}")
        queue.pending = kept
        if not kept:
            queue.failures = 0
            queue.singles = 0
            return
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (queue.failures - 1))
        delay *= 0.5 + random.random() / 2
        # one last attempt right at the oldest item's deadline rather than after it
        queue.next_attempt = min(now + delay, max(now + 0.01, min(e.deadline for e in kept)))


_lock = threading.Lock()
_instance: Publisher | None = None
_fork_hook = False


def _forget_after_fork() -> None:
    """In a forked child: the parent's queue is the parent's to send, and no thread of the
    parent exists here. Locks are replaced, not taken (another thread may have held them at
    the fork); the old publisher is emptied so its exit hook finds nothing to do."""
    global _instance, _lock, _signers_lock
    old = _instance
    if old is not None:
        old._cond = threading.Condition()
        old._queues = {}
        old._stopping = True
        old._thread = None
        old._sync_lock = threading.Lock()
        old._sync_client = None
    _instance = None
    _lock = threading.Lock()
    _signers_lock = threading.Lock()


def publisher() -> Publisher:
    """The process's publisher, made on first use."""
    global _instance, _fork_hook
    with _lock:
        if _instance is None:
            _instance = Publisher()
            if not _fork_hook and hasattr(os, "register_at_fork"):
                os.register_at_fork(after_in_child=_forget_after_fork)
                _fork_hook = True
        return _instance


_warned_no_targets = False


def publish(channel: str, formats: Any, id: str | None = None, prev_id: str | None = None,
            blocking: bool = False, callback: Callback | None = None,
            meta: Mapping[str, str] | None = None) -> None:
    """Publish ``formats`` (one format or a list: ``HttpStreamFormat``, ``HttpResponseFormat``,
    ``WebSocketMessageFormat``, or gripcontrol's) to ``channel`` (``GRIP_PREFIX`` prepended)
    on every configured proxy and publish server.

    Returns at once; the item is sent in the background, retried while a target is down (see
    the module docstring). ``callback(success, message)`` runs on the sender thread once every
    target has a result. With ``blocking=True`` the item is sent before returning and a
    failure raises ``clarion.errors.PublishError``. Bad input raises here: ``TypeError`` or
    ``ValueError`` for the formats, ``clarion.errors.GripError`` for an item a proxy would
    refuse, ``ImproperlyConfigured`` for bad settings; a full queue raises ``PublishError``.
    """
    global _warned_no_targets
    if not isinstance(channel, str) or not channel:
        raise ValueError(f"channel must be a non-empty str, not {channel!r}")
    if meta is not None and not all(isinstance(k, str) and isinstance(v, str)
                                    for k, v in meta.items()):
        raise TypeError("meta must map str to str")
    full_channel = config.prefix() + channel
    item = items.export(full_channel, export_formats(formats),
                        id=str(id) if id else None, prev_id=str(prev_id) if prev_id else None,
                        meta=meta)
    encoded = _encoder.encode(item)
    items.parse_publish(body([encoded]))   # refuse here what a proxy would refuse later
    targets = config.publish_targets()
    if not targets:
        if not _warned_no_targets:
            _warned_no_targets = True
            logger.warning("publish(%r): no GRIP_PROXIES, GRIP_URL or PUBLISH_SERVERS "
                           "configured; nothing is published", channel)
        if callback is not None:
            callback(True, "")
        return
    if blocking:
        try:
            publisher().send_now(targets, full_channel, encoded)
        except PublishError as exc:
            if callback is not None:
                callback(False, str(exc))
            raise
        if callback is not None:
            callback(True, "")
        return
    publisher().enqueue(targets, full_channel, encoded, config.retry_seconds(),
                        config.queue_size(), callback)


def publish_flush(timeout: float | None = None) -> bool:
    """Wait until every item queued by ``publish()`` was sent (or given up after the retry
    window); False when ``timeout`` seconds passed first. Runs at process exit by itself."""
    with _lock:
        instance = _instance
    return True if instance is None else instance.flush(timeout)
