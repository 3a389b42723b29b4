"""What can go wrong on an outbound HTTP/1.1 call, by what the caller may do about it."""

from __future__ import annotations

from clarion.errors import ClarionError


class OutboundError(ClarionError):
    """An outbound HTTP request got no usable answer; the message says why."""


class ConnectError(OutboundError):
    """No connection could be made (refused, unreachable, TLS failed, name did not resolve).
    Nothing was sent: always safe to try again."""


class ExchangeError(OutboundError):
    """The connection broke, or the server sent malformed HTTP, after the request was sent."""


class ClosedBeforeAnswer(ExchangeError):
    """The server closed the connection before a byte of the answer arrived (typically an idle
    keep-alive connection it had closed as the request was written)."""


class ResponseTooLarge(OutboundError):
    """The answer was larger than the client's ``max_body``; the connection was dropped instead
    of being read to the end."""


class ClientClosed(OutboundError):
    """The client was closed (the process is shutting down)."""
