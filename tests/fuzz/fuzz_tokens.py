"""Connection and subscription JWTs (``clarion.protocol.tokens``) as a client sends them, with
every kind of key configured. Documented error: TokenError. (Tokens with valid signatures and
arbitrary claims are the job of tests/test_fuzz_properties.py: a fuzzer cannot forge them.)"""

from __future__ import annotations

import base64
import contextlib

import _harness

with _harness.instrumented():
    from clarion.errors import TokenError
    from clarion.protocol import tokens

KEYS = tokens.TokenKeys(hmac_secret="fuzz-secret-that-is-long-enough-for-hs256",
                        audience="aud", issuer="iss")
HMAC_ONLY = tokens.TokenKeys(hmac_secret="fuzz-secret-that-is-long-enough-for-hs256")


def TestOneInput(data: bytes) -> None:
    for text in _harness.text_forms(data):
        for keys in (KEYS, HMAC_ONLY):
            for verify in (tokens.verify_connect_token, tokens.verify_subscribe_token):
                with contextlib.suppress(TokenError):
                    verify(text, keys)
        tokens.looks_like_jwt(text)


def _b64(raw: bytes) -> bytes:
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


SEEDS = [
    _b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + _b64(b'{"sub":"u","exp":1}') + b".sig",
    _b64(b'{"alg":"RS256"}') + b"." + _b64(b'{"sub":"u"}') + b".",
    _b64(b'{"alg":"none"}') + b"." + _b64(b'{"b64info":"e30="}') + b".",
    b"a.b.c",
]

if __name__ == "__main__":
    _harness.main(TestOneInput, SEEDS)
