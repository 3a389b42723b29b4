"""``Grip-Sig`` (``clarion.protocol.grip.sig``): key specs as Pushpin's config writes them
(``decode_key``) and tokens from the network (``verify``). Documented error: GripError."""

from __future__ import annotations

import contextlib

import _harness

with _harness.instrumented():
    from clarion.errors import GripError
    from clarion.protocol.grip import sig

KEY = b"changeme"


def _read(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")


def TestOneInput(data: bytes) -> None:
    for text in _harness.text_forms(data):
        for spec in (text, "base64:" + text, "file:" + text):
            with contextlib.suppress(GripError):
                sig.decode_key(spec, _read)
        with contextlib.suppress(GripError):
            sig.verify(text, KEY, iss="pushpin")
    sig.is_pem(data)


SEEDS = [
    sig.sign("pushpin", KEY, now=0).encode(),
    b"Y2hhbmdlbWU=",
    b"6368616e67656d65",
    b"-----BEGIN PRIVATE KEY-----\nMC4CAQA=\n-----END PRIVATE KEY-----\n",
]

if __name__ == "__main__":
    _harness.main(TestOneInput, SEEDS)
