"""Error and disconnect codes of Centrifugo's client protocol (docs/server/codes.md upstream)."""

from __future__ import annotations

from clarion.errors import Disconnect, ReplyError


def internal() -> ReplyError:
    return ReplyError(100, "internal server error", temporary=True)


def unauthorized() -> ReplyError:
    return ReplyError(101, "unauthorized")


def unknown_channel() -> ReplyError:
    return ReplyError(102, "unknown channel")


def permission_denied() -> ReplyError:
    return ReplyError(103, "permission denied")


def method_not_found() -> ReplyError:
    return ReplyError(104, "method not found")


def already_subscribed() -> ReplyError:
    return ReplyError(105, "already subscribed")


def limit_exceeded() -> ReplyError:
    return ReplyError(106, "limit exceeded")


def bad_request() -> ReplyError:
    return ReplyError(107, "bad request")


def not_available() -> ReplyError:
    return ReplyError(108, "not available")


def token_expired() -> ReplyError:
    return ReplyError(109, "token expired")


def expired() -> ReplyError:
    return ReplyError(110, "expired")


def too_many_requests() -> ReplyError:
    return ReplyError(111, "too many requests", temporary=True)


def unrecoverable_position() -> ReplyError:
    return ReplyError(112, "unrecoverable position")


# Unsubscribe push codes. 2000-2499: the subscription ends; 2500-2999: the client
# resubscribes (with recovery from its last position, when it has one).
UNSUBSCRIBE_SERVER = (2000, "server unsubscribe")
UNSUBSCRIBE_INSUFFICIENT_STATE = (2500, "insufficient state")

# Disconnects. 3000-3499 ask the client to reconnect, 3500-3999 do not.
CONNECTION_CLOSED = (3000, "connection closed")
SHUTDOWN = (3001, "shutdown")
SERVER_ERROR = (3004, "internal server error")
EXPIRED = (3005, "connection expired")
SUB_EXPIRED = (3006, "subscription expired")
SLOW = (3008, "slow")
WRITE_ERROR = (3009, "write error")
INSUFFICIENT_STATE = (3010, "insufficient state")
FORCE_RECONNECT = (3011, "force reconnect")
NO_PONG = (3012, "no pong")
TOO_MANY_REQUESTS = (3013, "too many requests")
INVALID_TOKEN = (3500, "invalid token")
BAD_REQUEST = (3501, "bad request")
STALE = (3502, "stale")
FORCE_DISCONNECT = (3503, "force disconnect")
CONNECTION_LIMIT = (3504, "connection limit")
CHANNEL_LIMIT = (3505, "channel limit")
PERMISSION_DENIED = (3507, "permission denied")
TOO_MANY_ERRORS = (3509, "too many errors")


def disconnect(pair: tuple[int, str]) -> Disconnect:
    return Disconnect(*pair)
