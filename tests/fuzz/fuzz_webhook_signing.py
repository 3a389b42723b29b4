"""Receiving a webhook (``clarion.webhooks.signing``): ``verify`` with headers and body from the
network, and ``SigningKey.parse`` / verification secrets as an operator writes them.
Documented errors: SignatureError for a request that does not verify, WebhookError for a
malformed secret. Nothing else."""

from __future__ import annotations

import contextlib

import _harness

with _harness.instrumented():
    from clarion.errors import WebhookError
    from clarion.webhooks import signing

HMAC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ED = str(signing.SigningKey.generate("ed25519"))
NOW = 1_700_000_000


def TestOneInput(data: bytes) -> None:
    head, _, body = data.partition(b"\n\n")
    pairs = []
    for line in head.decode("latin-1").split("\n"):
        name, _, value = line.partition(":")
        pairs.append((name.strip(), value))
    with contextlib.suppress(WebhookError):  # SignatureError is one
        signing.verify(body, pairs, [HMAC, ED], now=NOW)
    for text in _harness.text_forms(head):
        try:
            key = signing.SigningKey.parse(text)
        except WebhookError:
            key = None
        if key is not None:
            assert signing.SigningKey.parse(str(key)) == key
        with contextlib.suppress(WebhookError):
            signing.Verifier(text)


_BODY = b'{"type":"t","data":{}}'
SEEDS = [
    ("\n".join(f"{k}: {v}" for k, v in signing.signature_headers(
        "msg_1", NOW, _BODY, [HMAC, ED]).items()).encode() + b"\n\n" + _BODY),
    b"webhook-id: a\nwebhook-timestamp: 1700000000\nwebhook-signature: v1,AAAA v1a,=\n\nx",
    HMAC.encode(),
    ED.encode(),
    b"whpk_" + b"A" * 43,
]

if __name__ == "__main__":
    _harness.main(TestOneInput, SEEDS)
