"""Which way publications go (the hub's HTTP API, or straight into its Redis broker), built
once per process from the settings and rebuilt when ``CLARION`` changes or the process forks."""

from __future__ import annotations

import atexit
import os
import threading

from clarion.django.conf import on_realtime_reset, realtime_settings
from clarion.django.realtime._direct import DirectBroker
from clarion.django.realtime._hub import HubApi

_lock = threading.Lock()
_hub: HubApi | None = None
_direct: DirectBroker | None = None


def hub() -> HubApi:
    """The HTTP path: presence, history and disconnect always take it."""
    global _hub
    with _lock:
        if _hub is None:
            _hub = HubApi(realtime_settings())
        return _hub


def publisher() -> HubApi | DirectBroker:
    """Where publications and tickets go: the broker when ``CLARION["BROKER"]`` is set."""
    global _direct
    conf = realtime_settings()
    if not conf.direct:
        return hub()
    with _lock:
        if _direct is None:
            _direct = DirectBroker(conf)
        return _direct


def _close() -> None:
    global _hub, _direct
    with _lock:
        old_hub, old_direct, _hub, _direct = _hub, _direct, None, None
    if old_hub is not None:
        old_hub.close()
    if old_direct is not None:
        old_direct.close()


def _forget() -> None:
    # In a forked child: the parent's sockets and loop thread are not ours to close.
    global _hub, _direct, _lock
    _hub = _direct = None
    _lock = threading.Lock()


on_realtime_reset(_close)
atexit.register(_close)  # the broker's connections end with a QUIT, not a reset
os.register_at_fork(after_in_child=_forget)
