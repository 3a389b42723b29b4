"""Standard Webhooks signatures, so that a receiver can check our webhooks with any stock library.

We follow the Standard Webhooks spec (github.com/standard-webhooks/standard-webhooks,
``spec/standard-webhooks.md``) and Svix, its reference producer, rather than inventing a scheme:
receivers in every language already have verifiers for it, and a provider moving from Svix can
keep its endpoints' secrets. What is fixed by them:

* three headers: ``webhook-id`` (stable across retries, the receiver's dedup key),
  ``webhook-timestamp`` (integer Unix seconds of the *attempt*, which bounds replays) and
  ``webhook-signature``, a space-separated list so that old and new keys can both sign during a
  rotation;
* the signed content ``{id}.{timestamp}.{body}`` over the exact body bytes; the id and the
  timestamp must not contain ``.``, or the split between them would be ambiguous;
* ``v1,<base64 HMAC-SHA256>`` with a ``whsec_`` secret, and ``v1a,<base64 ed25519>`` with a
  ``whsk_`` secret key whose ``whpk_`` public key can be handed to receivers that must not be
  able to sign.

Key layout. ``whpk_`` is the 32-byte ed25519 public key everywhere. ``whsk_`` is not settled:
the Svix server writes the 64 bytes ``seed || public key`` (``EndpointSecret::serialize_secret_key``
emits ed25519-compact's ``SecretKey``, in ``server/svix-server/src/core/types/mod.rs``), while
the standard-webhooks Go library reads the 32-byte seed (``ed25519.NewKeyFromSeed`` in
``libraries/go/webhook_asymmetric.go``). We read both and write Svix's 64-byte form.

Receiving. The Python reference library (``standardwebhooks`` 1.1.0) checks ``v1`` only, with a
fixed 5-minute window and the system clock; :func:`verify` also checks ``v1a`` and takes the
tolerance and the clock as arguments.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
import secrets as _random
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Literal, NoReturn, TypeAlias

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from clarion.errors import SignatureError, WebhookError

__all__ = [
    "DEFAULT_TOLERANCE",
    "SigningKey",
    "Verifier",
    "generate_secret",
    "sign",
    "signature_headers",
    "verify",
]

Kind: TypeAlias = Literal["hmac", "ed25519"]

HMAC_PREFIX = "whsec_"
SECRET_KEY_PREFIX = "whsk_"
PUBLIC_KEY_PREFIX = "whpk_"

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"

DEFAULT_TOLERANCE = 300.0  # seconds; what the reference libraries hard-code

_HMAC_GENERATED_BYTES = 32  # the spec wants 24..64 (Svix makes 24); 256 bits matches SHA-256
_SEED_BYTES = 32
_PUBLIC_BYTES = 32
_HMAC_SIGNATURE_BYTES = 32
_ED25519_SIGNATURE_BYTES = 64

# An id becomes a header value and part of the signed content: visible ASCII keeps it a single
# safe header token (no CR/LF injection), and no "." keeps "{id}.{timestamp}." unambiguous.
_MSG_ID = re.compile(r"[\x21-\x2d\x2f-\x7e]+")
_DIGITS = re.compile(r"[0-9]{1,20}")


def _b64decode(text: str) -> bytes:
    """Strict standard base64; missing padding is tolerated, as the reference libraries do."""
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _bad_secret(message: str) -> NoReturn:
    # The secret itself never goes into the message: errors end up in logs and admin pages.
    raise WebhookError(message) from None


def _decode_secret(prefix: str, encoded: str) -> bytes:
    try:
        return _b64decode(encoded)
    except (binascii.Error, ValueError) as exc:
        _bad_secret(f"{prefix} secret is not valid base64 ({exc})")


def _ed25519_from_secret(raw: bytes) -> Ed25519PrivateKey:
    """A whsk_ payload: the 32-byte seed, or Svix's 64-byte seed followed by the public key."""
    if len(raw) not in (_SEED_BYTES, _SEED_BYTES + _PUBLIC_BYTES):
        _bad_secret(
            f"{SECRET_KEY_PREFIX} key must decode to {_SEED_BYTES} bytes (ed25519 seed) or "
            f"{_SEED_BYTES + _PUBLIC_BYTES} bytes (seed + public key), not {len(raw)}"
        )
    key = Ed25519PrivateKey.from_private_bytes(raw[:_SEED_BYTES])
    if len(raw) > _SEED_BYTES and not hmac.compare_digest(
        raw[_SEED_BYTES:], key.public_key().public_bytes_raw()
    ):
        # A corrupted or hand-assembled key would sign with a public key nobody has.
        _bad_secret(f"{SECRET_KEY_PREFIX} key's last 32 bytes are not the public key of its seed")
    return key


class SigningKey:
    """One sender-side key: an HMAC secret (``v1``) or an ed25519 secret key (``v1a``)."""

    __slots__ = ("_ed25519", "_secret", "kind")

    kind: Kind
    _secret: bytes  # the HMAC secret, or the ed25519 seed
    _ed25519: Ed25519PrivateKey | None

    def __init__(self, kind: Kind, secret: bytes) -> None:
        if kind == "hmac":
            if not secret:
                _bad_secret(f"{HMAC_PREFIX} secret is empty")
            ed25519 = None
        elif kind == "ed25519":
            ed25519 = _ed25519_from_secret(secret)
            secret = secret[:_SEED_BYTES]
        else:
            raise WebhookError(f"key kind must be 'hmac' or 'ed25519', not {kind!r}")
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "_secret", bytes(secret))
        object.__setattr__(self, "_ed25519", ed25519)

    @classmethod
    def parse(cls, secret: str) -> SigningKey:
        """Read a ``whsec_…`` or ``whsk_…`` string (surrounding whitespace is ignored)."""
        text = secret.strip()
        if text.startswith(HMAC_PREFIX):
            return cls("hmac", _decode_secret(HMAC_PREFIX, text[len(HMAC_PREFIX) :]))
        if text.startswith(SECRET_KEY_PREFIX):
            raw = _decode_secret(SECRET_KEY_PREFIX, text[len(SECRET_KEY_PREFIX) :])
            return cls("ed25519", raw)
        if text.startswith(PUBLIC_KEY_PREFIX):
            _bad_secret(
                f"a public key cannot sign: {PUBLIC_KEY_PREFIX} is what receivers verify with; "
                f"sign with the {SECRET_KEY_PREFIX} secret key"
            )
        _bad_secret(
            f"a signing secret must start with {HMAC_PREFIX} (HMAC) or {SECRET_KEY_PREFIX} "
            f"(ed25519); this one ({len(text)} characters) has neither prefix"
        )

    @classmethod
    def generate(cls, kind: Kind = "hmac") -> SigningKey:
        if kind == "ed25519":
            return cls(kind, Ed25519PrivateKey.generate().private_bytes_raw())
        if kind == "hmac":
            return cls(kind, _random.token_bytes(_HMAC_GENERATED_BYTES))
        raise WebhookError(f"key kind must be 'hmac' or 'ed25519', not {kind!r}")

    def __str__(self) -> str:
        if self._ed25519 is None:
            return HMAC_PREFIX + _b64encode(self._secret)
        # Svix's layout (seed || public key), so the string can be pasted into Svix as is.
        public = self._ed25519.public_key().public_bytes_raw()
        return SECRET_KEY_PREFIX + _b64encode(self._secret + public)

    def public(self) -> str:
        """What a receiver needs: ``whpk_…`` for ed25519, the shared ``whsec_…`` for HMAC."""
        if self._ed25519 is None:
            return str(self)
        return PUBLIC_KEY_PREFIX + _b64encode(self._ed25519.public_key().public_bytes_raw())

    def sign(self, msg_id: str, timestamp: int, body: bytes) -> str:
        """One ``webhook-signature`` entry: ``v1,…`` or ``v1a,…``."""
        content = _signed_content(msg_id, timestamp, body)
        if self._ed25519 is None:
            digest = hmac.new(self._secret, content, hashlib.sha256).digest()
            return "v1," + _b64encode(digest)
        return "v1a," + _b64encode(self._ed25519.sign(content))

    def __repr__(self) -> str:
        if self._ed25519 is None:
            return f"<SigningKey hmac {len(self._secret)} bytes>"
        return f"<SigningKey ed25519 {self.public()}>"  # the public key only

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SigningKey):
            return NotImplemented
        return self.kind == other.kind and hmac.compare_digest(self._secret, other._secret)

    def __hash__(self) -> int:
        return hash((self.kind, self._secret))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("SigningKey is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("SigningKey is immutable")

    def __reduce__(self) -> tuple[type[SigningKey], tuple[Kind, bytes]]:
        # The slots' default pickling would go through the blocked __setattr__.
        return (SigningKey, (self.kind, self._secret))


def _signed_content(msg_id: str, timestamp: int, body: bytes) -> bytes:
    if not isinstance(msg_id, str) or not _MSG_ID.fullmatch(msg_id):
        raise WebhookError(
            "webhook id must be non-empty visible ASCII without '.' or whitespace "
            f"(the spec forbids '.' in the signed id): {msg_id!r}"
        )
    if type(timestamp) is not int or timestamp < 0:
        raise WebhookError(
            f"webhook timestamp must be a non-negative int (Unix seconds): {timestamp!r}"
        )
    if not isinstance(body, bytes):
        body = bytes(body)
    return f"{msg_id}.{timestamp}.".encode("ascii") + body


def _signing_keys(keys: Iterable[SigningKey | str]) -> list[SigningKey]:
    parsed = [key if isinstance(key, SigningKey) else SigningKey.parse(key) for key in keys]
    if not parsed:
        raise WebhookError("no signing key: a webhook needs at least one signature")
    return parsed


def generate_secret(kind: Kind = "hmac") -> str:
    """A new ``whsec_`` (32 random bytes) or ``whsk_`` (ed25519) secret, as a string to store."""
    return str(SigningKey.generate(kind))


def sign(msg_id: str, timestamp: int, body: bytes, keys: Iterable[SigningKey | str]) -> str:
    """The ``webhook-signature`` value: one entry per key, in order, space-separated."""
    return " ".join(key.sign(msg_id, timestamp, body) for key in _signing_keys(keys))


def signature_headers(
    msg_id: str, timestamp: int, body: bytes, keys: Iterable[SigningKey | str]
) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt."""
    return {
        ID_HEADER: msg_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(msg_id, timestamp, body, keys),
    }


# --- receiving ---------------------------------------------------------------------------------


class _HmacCheck:
    __slots__ = ("secret",)
    version = "v1"

    def __init__(self, secret: bytes) -> None:
        self.secret = secret

    def matcher(self, content: bytes) -> Callable[[bytes], bool]:
        # One HMAC per request, however many v1 entries the header carries.
        expected = hmac.new(self.secret, content, hashlib.sha256).digest()
        return lambda signature: hmac.compare_digest(expected, signature)


class _Ed25519Check:
    __slots__ = ("public",)
    version = "v1a"

    def __init__(self, public: Ed25519PublicKey) -> None:
        self.public = public

    def matcher(self, content: bytes) -> Callable[[bytes], bool]:
        def matches(signature: bytes) -> bool:
            try:
                self.public.verify(signature, content)
            except InvalidSignature:
                return False
            return True

        return matches


_Check: TypeAlias = _HmacCheck | _Ed25519Check


def _check_for(secret: str | SigningKey) -> _Check:
    """A receiver's secret: whsec_ or bare base64 (v1), whpk_ or whsk_ (v1a)."""
    if isinstance(secret, SigningKey):
        key = secret
    else:
        text = secret.strip()
        if text.startswith(PUBLIC_KEY_PREFIX):
            raw = _decode_secret(PUBLIC_KEY_PREFIX, text[len(PUBLIC_KEY_PREFIX) :])
            if len(raw) != _PUBLIC_BYTES:
                _bad_secret(
                    f"{PUBLIC_KEY_PREFIX} key must decode to {_PUBLIC_BYTES} bytes, not {len(raw)}"
                )
            return _Ed25519Check(Ed25519PublicKey.from_public_bytes(raw))
        if text.startswith((HMAC_PREFIX, SECRET_KEY_PREFIX)):
            key = SigningKey.parse(text)
        else:
            # standardwebhooks.Webhook accepts the bare base64 too, and some providers show
            # the secret that way; anything else is a configuration mistake worth naming.
            try:
                raw = _b64decode(text)
            except (binascii.Error, ValueError):
                _bad_secret(
                    f"a verification secret must be {HMAC_PREFIX}…, {PUBLIC_KEY_PREFIX}…, "
                    f"{SECRET_KEY_PREFIX}… or bare base64; this one ({len(text)} characters) "
                    "is none of them"
                )
            key = SigningKey("hmac", raw)
    if key._ed25519 is None:
        return _HmacCheck(key._secret)
    return _Ed25519Check(key._ed25519.public_key())


def _checks(secrets: str | SigningKey | Iterable[str | SigningKey]) -> tuple[_Check, ...]:
    if isinstance(secrets, str | SigningKey):
        secrets = [secrets]
    checks = tuple(_check_for(secret) for secret in secrets)
    if not checks:
        raise WebhookError("no verification secret given")
    return checks


def _check_tolerance(tolerance: float) -> float:
    if not tolerance >= 0:  # also catches NaN
        raise WebhookError(f"tolerance must be >= 0 seconds, not {tolerance!r}")
    return float(tolerance)


def _header_values(
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
) -> dict[str, list[str]]:
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    wanted = (ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER)
    found: dict[str, list[str]] = {}
    for name, value in pairs:
        lowered = name.lower()
        if lowered in wanted:
            found.setdefault(lowered, []).append(value.strip())
    return found


def _single(found: dict[str, list[str]], name: str) -> str:
    values = found.get(name)
    if not values:
        raise SignatureError(f"missing {name} header")
    if len(set(values)) > 1:
        raise SignatureError(f"{name} header appears {len(values)} times with different values")
    if not values[0]:
        raise SignatureError(f"{name} header is empty")
    return values[0]


def _shown(value: str) -> str:
    # Header values come from the network: quote them and keep the message short.
    return repr(value if len(value) <= 40 else value[:40] + "…")


def _verify(
    checks: tuple[_Check, ...],
    body: bytes | str,
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    tolerance: float,
    now: float | None,
) -> str:
    found = _header_values(headers)
    msg_id = _single(found, ID_HEADER)
    stamp = _single(found, TIMESTAMP_HEADER)
    if SIGNATURE_HEADER not in found:
        raise SignatureError(f"missing {SIGNATURE_HEADER} header")
    # Several webhook-signature fields are one list split over lines (RFC 9110 field lines).
    entries = " ".join(found[SIGNATURE_HEADER]).split()
    if not entries:
        raise SignatureError(f"{SIGNATURE_HEADER} header is empty")

    if not _DIGITS.fullmatch(stamp):
        raise SignatureError(
            f"{TIMESTAMP_HEADER} is not an integer (Unix seconds): {_shown(stamp)}"
        )
    # Whole seconds on both sides, as the reference libraries do: exactly `tolerance` seconds
    # away is accepted, one more is not.
    age = math.floor(time.time() if now is None else now) - int(stamp)
    if age > tolerance:
        raise SignatureError(
            f"{TIMESTAMP_HEADER} is {age} s old, beyond the {tolerance:g} s tolerance"
        )
    if -age > tolerance:
        raise SignatureError(
            f"{TIMESTAMP_HEADER} is {-age} s in the future, beyond the {tolerance:g} s tolerance"
        )

    data = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    content = f"{msg_id}.{stamp}.".encode() + data
    usable = {check.version for check in checks}
    matchers: list[Callable[[bytes], bool] | None] = [None] * len(checks)
    seen: list[str] = []
    tried = malformed = 0
    for entry in entries:
        version, _, encoded = entry.partition(",")
        seen.append(_shown(version))
        if version not in usable:
            continue  # another scheme, or a key type this receiver does not hold
        tried += 1
        try:
            signature = _b64decode(encoded)
        except (binascii.Error, ValueError):
            malformed += 1
            continue
        if len(signature) != (
            _HMAC_SIGNATURE_BYTES if version == "v1" else _ED25519_SIGNATURE_BYTES
        ):
            malformed += 1
            continue
        for index, check in enumerate(checks):
            if check.version != version:
                continue
            matcher = matchers[index] or check.matcher(content)
            matchers[index] = matcher
            if matcher(signature):
                return msg_id

    wanted = " or ".join(sorted(usable))
    if not tried:
        present = ", ".join(dict.fromkeys(seen))
        raise SignatureError(
            f"{SIGNATURE_HEADER} has no {wanted} signature to check with the "
            f"secrets given (versions present: {present})"
        )
    detail = f"; {malformed} of them not valid base64 of the right length" if malformed else ""
    raise SignatureError(
        f"no signature matched: {tried} {wanted} signature(s) checked against "
        f"{len(checks)} secret(s){detail}"
    )


def verify(
    body: bytes | str,
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    secrets: str | SigningKey | Iterable[str | SigningKey],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> str:
    """Check a received webhook and return its ``webhook-id`` (the dedup key).

    ``body`` must be the raw request body (``request.body`` in Django), not re-serialized JSON.
    ``headers`` is matched case-insensitively: Django's ``request.headers``, a dict, or a list
    of ``(name, value)`` pairs. Each of ``secrets`` is a ``whsec_`` (or bare base64) HMAC secret,
    a ``whpk_`` public key or a ``whsk_`` secret key; any one matching any signature passes,
    which is what lets a sender rotate keys. The timestamp must be within ``tolerance`` seconds
    of ``now`` (default: the system clock) either way.

    Raises :class:`~clarion.errors.SignatureError`, whose message says what was wrong, when the
    request does not verify, and :class:`~clarion.errors.WebhookError` when a secret itself is
    malformed (a configuration error, not a bad request).
    """
    return _verify(_checks(secrets), body, headers, _check_tolerance(tolerance), now)


class Verifier:
    """:func:`verify` with the secrets parsed once (and malformed ones reported at startup).

    ``Verifier(secrets, tolerance=300).verify(body, headers)`` returns the ``webhook-id``."""

    __slots__ = ("_checks", "tolerance")

    def __init__(
        self,
        secrets: str | SigningKey | Iterable[str | SigningKey],
        *,
        tolerance: float = DEFAULT_TOLERANCE,
    ) -> None:
        self._checks = _checks(secrets)  # malformed secrets fail here, at startup
        self.tolerance = _check_tolerance(tolerance)

    def verify(
        self,
        body: bytes | str,
        headers: Mapping[str, str] | Iterable[tuple[str, str]],
        *,
        now: float | None = None,
    ) -> str:
        """Same as :func:`verify` with this verifier's secrets and tolerance."""
        return _verify(self._checks, body, headers, self.tolerance, now)

    def __repr__(self) -> str:
        kinds = ", ".join(check.version for check in self._checks)
        return f"<Verifier {kinds} tolerance={self.tolerance:g}s>"
