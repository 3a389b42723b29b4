"""``Grip-Sig``: the JWT a GRIP proxy puts on every request it forwards to an origin.

Claims are exactly ``{"iss": ..., "exp": now + 3600}``, as Pushpin signs them; the algorithm
follows the key: a secret signs HS256, a PEM EC key ES256, a PEM RSA key RS256. Keys are given
the way Pushpin's config takes them: a literal string, ``base64:<b64>`` or ``file:<path>``
(reading the file is the caller's job: this module does no I/O, see ``key_from_config``).
"""

from __future__ import annotations

import base64
import time
import warnings
from typing import Any

import jwt
from jwt.warnings import InsecureKeyLengthWarning

from clarion.errors import GripError

SIG_TTL = 3600
VERIFY_ALGORITHMS = ["HS256", "RS256", "ES256"]


def decode_key(spec: str | bytes, read_file: Any = None) -> bytes:
    """A key as Pushpin's config writes it. ``read_file(path) -> bytes`` serves ``file:``;
    a file holds a PEM key or a hex-encoded secret."""
    if isinstance(spec, bytes):
        return spec
    if spec.startswith("base64:"):
        try:
            return base64.b64decode(spec[7:], validate=True)
        except ValueError as exc:  # binascii.Error, and the ValueError for non-ASCII text
            raise GripError(f"key {spec[:12]}…: not valid base64") from exc
    if spec.startswith("file:"):
        if read_file is None:
            raise GripError("file: keys need a file reader")
        data: bytes = read_file(spec[5:])
        if is_pem(data):
            return data
        try:
            return bytes.fromhex(data.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError) as exc:
            raise GripError(f"key file {spec[5:]}: neither a PEM key nor hex") from exc
    return spec.encode()


def is_pem(key: bytes) -> bool:
    return key.lstrip().startswith(b"-----BEGIN")


def _signing_algorithm(key: bytes) -> str:
    if not is_pem(key):
        return "HS256"
    header = key.lstrip()[:40]
    if b"EC " in header:
        return "ES256"
    if b"RSA " in header:
        return "RS256"
    # PKCS#8 "PRIVATE KEY" says nothing about its type: ask the key itself.
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        private = load_pem_private_key(key, password=None)
    except ValueError as exc:
        raise GripError(f"signing key is PEM but not a private key: {exc}") from exc
    return "ES256" if isinstance(private, ec.EllipticCurvePrivateKey) else "RS256"


def sign(iss: str, key: bytes, now: float | None = None, ttl: int = SIG_TTL) -> str:
    exp = int(now if now is not None else time.time()) + ttl
    # Pushpin's default key "changeme" is short by design; whoever configures it is told once
    # (at startup), not on every request.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return jwt.encode({"iss": iss, "exp": exp}, key, algorithm=_signing_algorithm(key))


class Signer:
    """Signs once and reuses the token for a minute: a proxy forwards many requests a second
    and the token is valid for an hour."""

    __slots__ = ("_at", "_token", "iss", "key")

    REUSE = 60.0

    def __init__(self, iss: str, key: bytes) -> None:
        self.iss = iss
        self.key = key
        self._token = ""
        self._at = 0.0

    def token(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        if not self._token or now - self._at > self.REUSE:
            self._token = sign(self.iss, self.key, now)
            self._at = now
        return self._token


def verify(token: str, key: bytes, iss: str | None = None) -> dict[str, Any]:
    """Check a ``Grip-Sig`` (or a Bearer JWT on the publish API): signature, a present and
    unexpired ``exp``, and ``iss`` when one is required."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InsecureKeyLengthWarning)
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=VERIFY_ALGORITHMS, options={"require": ["exp"]})
    except jwt.PyJWTError as exc:
        raise GripError(f"bad GRIP signature: {exc}") from exc
    if iss is not None and claims.get("iss") != iss:
        raise GripError(f"bad GRIP signature: issuer {claims.get('iss')!r} is not {iss!r}")
    return claims
