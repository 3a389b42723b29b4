"""GRIP's parameterised header syntax (``clarion.protocol.grip.headers``), and the header
values built on it: Sec-WebSocket-Extensions (``wsevents.grip_extension``) and the keep-alive
cstring (``instruct.unescape_cstring``). Documented error: GripError.
A parameter written by ``format_param`` must parse back to itself."""

from __future__ import annotations

import contextlib

import _harness

with _harness.instrumented():
    from clarion.errors import GripError
    from clarion.protocol.grip import headers, instruct, wsevents


def TestOneInput(data: bytes) -> None:
    latin1, _ = _harness.text_forms(data)
    with contextlib.suppress(GripError):
        headers.parse_list([latin1, latin1[::-1]])
    with contextlib.suppress(GripError):
        wsevents.grip_extension(latin1)
    with contextlib.suppress(GripError):
        instruct.unescape_cstring(latin1)
    escaped = instruct.escape_cstring(data)
    if escaped is not None:
        assert instruct.unescape_cstring(escaped) == data
    name, _, value = latin1.partition("=")
    name = "".join(c for c in name if c not in ' ,;="\\\t').strip() or "n"
    if value.strip() == value:
        assert headers.parse_params(headers.format_param(name, value)) == [(name, value)]


SEEDS = [
    b'stream; k=v; k2="q,v\\"x", b; timeout=5',
    b"grip; message-prefix=\"\"",
    b"ping\\r\\n\\x41; format=cstring",
    b"a=b",
]

if __name__ == "__main__":
    _harness.main(TestOneInput, SEEDS)
