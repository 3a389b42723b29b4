"""Limits on HTTP connections that cost the hub without sending it requests.

- **Header timeout**: a connection must send a complete request head within
  ``http_header_timeout`` of opening (or of its first byte after an idle keep-alive wait);
  otherwise it is answered ``408`` and closed. A slowloris client, trickling header bytes,
  holds a connection this long at most.
- **Keep-alive timeout**: a connection that waits between requests for ``http_keepalive_timeout``
  is closed (silently, as nginx and uvicorn do: no request is outstanding to answer).
- **Connections per address**: at most ``max_connections_per_address`` at once from one client
  address (the real client's when the peer is a trusted proxy; an IPv6 client's /64); 0 is
  no limit.

No timer per connection: a connection waiting for a head or for its next request sits in one of
two insertion-ordered dicts, each with a single timeout, so their deadlines are in order and a
sweep once a second stops at the first that has not passed. Entering, leaving and re-entering
(which moves an entry to the end) are dict operations, and a connection that has been taken
over (a WebSocket, an event stream) is in neither: 15,000 of those cost the sweep nothing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Protocol

__all__ = ["ConnectionLimits", "Timed", "address_key"]


class Timed(Protocol):
    """What the sweep calls on a connection whose wait ran out."""

    def header_timed_out(self) -> None: ...

    def idle_timed_out(self) -> None: ...


class ConnectionLimits:
    __slots__ = ("counts", "header_timeout", "heads", "idle", "keepalive_timeout",
                 "per_address")

    def __init__(self, header_timeout: float, keepalive_timeout: float,
                 per_address: int) -> None:
        self.header_timeout = header_timeout
        self.keepalive_timeout = keepalive_timeout
        self.per_address = per_address
        # connection -> deadline; insertion order is deadline order (one timeout per dict).
        self.heads: dict[Timed, float] = {}
        self.idle: dict[Timed, float] = {}
        self.counts: dict[str, int] = {}

    # -- waits ------------------------------------------------------------------------------

    def wait_head(self, conn: Timed, now: float) -> None:
        """``conn`` owes a request head (it just opened, or sent the first byte of one)."""
        self.idle.pop(conn, None)
        if conn not in self.heads:
            self.heads[conn] = now + self.header_timeout

    def touch(self, conn: Timed, now: float) -> None:
        """``conn`` is sending a request body and just sent more: a fresh deadline."""
        self.heads.pop(conn, None)
        self.idle.pop(conn, None)
        self.heads[conn] = now + self.header_timeout

    def wait_request(self, conn: Timed, now: float) -> None:
        """``conn`` has been answered and waits for its next request."""
        self.heads.pop(conn, None)
        self.idle.pop(conn, None)  # re-inserted at the end: its deadline is now the latest
        self.idle[conn] = now + self.keepalive_timeout

    def busy(self, conn: Timed) -> None:
        """``conn`` sent a complete head (or was taken over, or closed): no deadline."""
        self.heads.pop(conn, None)
        self.idle.pop(conn, None)

    def sweep(self, now: float, failed: Callable[[BaseException], None]) -> None:
        """Call back every connection whose wait has run out; a callback's failure goes to
        ``failed`` and the sweep goes on with the others."""
        for waiting, expire in ((self.heads, _header), (self.idle, _idle)):
            expired = []
            for conn, deadline in waiting.items():
                if deadline > now:
                    break
                expired.append(conn)
            for conn in expired:
                waiting.pop(conn, None)
                try:
                    expire(conn)
                except Exception as exc:  # noqa: BLE001 - the caller logs it with traceback
                    failed(exc)

    # -- connections per address -------------------------------------------------------------

    def acquire(self, address: str) -> bool:
        """Count one more connection from ``address``; False (and not counted) if that would
        exceed the limit."""
        if self.per_address <= 0:
            return True
        key = address_key(address)
        count = self.counts.get(key, 0)
        if count >= self.per_address:
            return False
        self.counts[key] = count + 1
        return True

    def release(self, address: str) -> None:
        if self.per_address <= 0:
            return
        key = address_key(address)
        count = self.counts.get(key, 0) - 1
        if count > 0:
            self.counts[key] = count
        else:
            self.counts.pop(key, None)


def address_key(address: str) -> str:
    """What one "address" is for the per-address limit: an IPv4 address, or an IPv6 address's
    /64 (one subscriber's network: a host given a /64 can use any of its 2^64 addresses, so
    counting them one by one would limit nothing). Anything else counts as it is."""
    if ":" not in address:
        return address
    try:
        ip = ipaddress.IPv6Address(address)
    except ValueError:
        return address
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return ip.exploded[:19] + "::/64"


def _header(conn: Timed) -> None:
    conn.header_timed_out()


def _idle(conn: Timed) -> None:
    conn.idle_timed_out()
