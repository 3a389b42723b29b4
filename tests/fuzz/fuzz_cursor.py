"""Resume cursors of the unidirectional transports (``clarion.protocol.cursor.decode``): what a
client sends as ``cursor=`` or ``Last-Event-ID``. Documented error: CursorError.
A cursor the hub wrote must read back as the positions it was written from."""

from __future__ import annotations

import _harness

with _harness.instrumented():
    from clarion.protocol import cursor


def TestOneInput(data: bytes) -> None:
    for text in _harness.text_forms(data):
        try:
            positions = cursor.decode(text)
        except cursor.CursorError:
            continue
        again = cursor.encode(positions)
        if len(again) <= cursor.MAX_CURSOR_LENGTH:
            assert cursor.decode(again) == positions, (text, again)


SEEDS = [
    b"5:abcd:chat%3Alobby",
    b"1:e1:a|2:e2:b%7Cc|0::d",
    b"",
    b"12:ep:ch:with:colons",
]

if __name__ == "__main__":
    _harness.main(TestOneInput, SEEDS)
