"""The one exception tree. Errors are raised where they are found and translated at the edges:
a client error becomes a protocol error reply, a disconnect becomes a close frame, a config error
becomes a message and exit status 2 on the command line."""

from __future__ import annotations


class ClarionError(Exception):
    """Base of every error Clarion raises on purpose."""


class ConfigError(ClarionError):
    """The configuration (file, environment or flags) is invalid; the message names the key."""


class DecryptionError(ConfigError):
    """A value Clarion stored encrypted (a listener's signing secret) is not decryptable with
    any configured key: the key that encrypted it was removed, or the settings are wrong. The
    message names the setting to fix (``CLARION['ENCRYPTION_KEYS']`` or
    ``SECRET_KEY_FALLBACKS``); it never contains the value or a key."""


class FrameError(ClarionError):
    """Bytes on the wire that do not follow the transport's framing (WebSocket, HTTP)."""

    def __init__(self, message: str, close_code: int = 1002) -> None:
        super().__init__(message)
        self.close_code = close_code


class ReplyError(ClarionError):
    """A command failed; sent back to the client as a protocol error reply (codes 100-199)."""

    def __init__(self, code: int, message: str, temporary: bool = False) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message
        self.temporary = temporary


class Disconnect(ClarionError):
    """The connection must end with this code (3000-4999) and reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason

    @property
    def reconnect(self) -> bool:
        # Centrifugo's rule: 3500-3999 and 4500-4999 are terminal.
        return not (3500 <= self.code <= 3999 or 4500 <= self.code <= 4999)


class TokenError(ClarionError):
    """A connection or subscription token (JWT or ticket) was rejected."""

    def __init__(self, message: str, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


class GripError(ClarionError):
    """GRIP input that does not follow the protocol: a response instruction, a publish item,
    WebSocket-over-HTTP events, a routes file line. The message says what and where."""


class BrokerError(ClarionError):
    """The broker backend failed (lost connection, bad state)."""


class PublishError(ClarionError):
    """Publishing to a GRIP proxy or publish server failed (it was unreachable, or answered
    with an error status). The message names the server, the status and the channels."""


class WebhookError(ClarionError):
    """A webhook could not be built, signed, addressed or delivered."""


class SignatureError(WebhookError):
    """A webhook's signature headers are missing, malformed, stale or do not verify.

    Raised by :func:`clarion.webhooks.verify` on the receiving side; the message says which."""


class AddressRejected(WebhookError):
    """A listener URL is not allowed: bad scheme, credentials, plain HTTP under an HTTPS-only
    policy, or a host that is (or resolves only to) a private, loopback, link-local, multicast
    or reserved address outside ``ALLOWED_NETWORKS``. The message names the address and rule."""


class PayloadTooLarge(WebhookError):
    """An event's JSON body is larger than the configured ``MAX_PAYLOAD``; nothing was written."""


class LimitError(WebhookError, ValueError):
    """A value a tenant chose (a header, a retry schedule, a timeout, a filter) is outside what
    Clarion accepts; the message says which bound and by how much. A ``ValueError`` too, so
    callers that validate values by that rule keep working."""


class HubError(ClarionError):
    """A call to the hub's server API (``POST /api/<method>``) failed; raised by
    :mod:`clarion.client`. Catch this to handle every failure of a call at once."""


class HubUnavailable(HubError):
    """The hub could not be reached or could not serve the call: the connection failed, the
    call timed out, or the hub (or its broker, or a proxy in front of it) answered 502, 503 or
    504. ``retry_after`` is the answer's ``Retry-After`` in seconds, when it gave one.

    Whether the call took effect is unknown after a timeout: retry a publish only with the same
    idempotency key."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class HubReplyError(HubError):
    """The hub answered the call with an error: an API error in the body (``code`` and
    ``message`` as Centrifugo's, e.g. 102 unknown channel, 108 not available), or an HTTP error
    status (401 wrong API key, 422 invalid request with the failing ``fields``, 413 too large).
    ``status`` is the HTTP status (200 for an API error in a successful answer)."""

    def __init__(self, code: int, message: str, *, status: int = 200,
                 fields: list[dict[str, str]] | None = None) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message
        self.status = status
        self.fields: list[dict[str, str]] = fields or []


class ConnectError(ClarionError):
    """Connecting a user's account on a federated server failed (:mod:`clarion.connect`).

    ``reason`` is a sentence safe to show the user: it names the server and what went wrong, and
    never holds a secret (no token, client secret, verifier or query string)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FetchError(ConnectError):
    """A document could not be fetched from another server: the address policy refused the
    address (private, loopback, ... or a redirect there), plain http where https is required,
    too big, too slow, a TLS or connection failure, or a malformed document where JSON or XML
    was expected. The message names the URL (without its query) and the limit or rule."""


class DiscoveryError(ConnectError):
    """The user's server could not be found or described: unknown host, no such account
    (WebFinger 404), or no OAuth endpoints published (host-meta, RFC 8414, OpenID)."""


class RegistrationError(ConnectError):
    """The server refused to register Clarion as a client, or answered with something that
    holds no client credentials."""


class AuthorizationError(ConnectError):
    """The user's authorization did not complete: they denied it, or the flow's state is
    missing, reused or expired, or the verifier or code is wrong."""


class OAuthTokenError(ConnectError):
    """The server's token endpoint failed: unreachable, answered garbage, or refused the grant
    (``invalid_grant``)."""


class RevokedError(OAuthTokenError):
    """A token or the client's registration was revoked: a 401 on use, or ``invalid_client``
    from the token endpoint. The account must be connected again (and the client re-registered
    when the client was revoked: ``client_revoked`` is True then)."""

    def __init__(self, reason: str, *, client_revoked: bool = False) -> None:
        super().__init__(reason)
        self.client_revoked = client_revoked
