"""Server-Sent Events framing (``clarion.protocol.sse``) with any id and event name text the
hub can hold (header and query text: latin-1 or UTF-8). Nothing may raise."""

from __future__ import annotations

import _harness

with _harness.instrumented():
    from clarion.protocol import sse


def TestOneInput(data: bytes) -> None:
    head, _, body = data.partition(b"\n")
    for text in _harness.text_forms(head):
        name, _, ident = text.partition(" ")
        out = sse.event(body.replace(b"\n", b" "), id=ident or None, name=name or None)
        assert out.endswith(b"\n\n")
    sse.retry(len(data))


SEEDS = [b"message 1:e:chat\n{\"a\":1}", b"\n{}", b"x \n"]

if __name__ == "__main__":
    _harness.main(TestOneInput, SEEDS)
