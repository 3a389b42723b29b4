"""Clarion's outbound HTTP/1.1 layer: a small keep-alive client on httptools for the calls a
server makes many of (the hub's proxies to the app's backend), where a general-purpose client's
per-request cost would be as large as the backend's own.

It may be imported by the hub and the webhook engine alike, and imports neither (nor the broker,
Django or the CLI): see the import-linter contract in pyproject.toml.
"""

from clarion.outbound._client import (
    KEEPALIVE_EXPIRY,
    MAX_BODY,
    MAX_CONNECTIONS,
    MAX_KEEPALIVE,
    USER_AGENT,
    Client,
    Dialer,
    InvalidHeader,
    RequestTimeout,
    Response,
    default_ssl_context,
    dial,
)
from clarion.outbound._endpoint import Endpoint, safe_url
from clarion.outbound._errors import (
    ClientClosed,
    ClosedBeforeAnswer,
    ConnectError,
    ExchangeError,
    OutboundError,
    ResponseTooLarge,
)

__all__ = [
    "KEEPALIVE_EXPIRY",
    "MAX_BODY",
    "MAX_CONNECTIONS",
    "MAX_KEEPALIVE",
    "USER_AGENT",
    "Client",
    "ClientClosed",
    "ClosedBeforeAnswer",
    "ConnectError",
    "Dialer",
    "Endpoint",
    "ExchangeError",
    "InvalidHeader",
    "OutboundError",
    "RequestTimeout",
    "Response",
    "ResponseTooLarge",
    "default_ssl_context",
    "dial",
    "safe_url",
]
