"""Native publications as GRIP items and back (``clarion.protocol.grip.mapping``), for any JSON
value a publication can carry. Nothing may raise; a value that is not JSON is out of scope (the
server API refuses it before it reaches the mapping)."""

from __future__ import annotations

import _harness

with _harness.instrumented():
    import msgspec

    from clarion.protocol.grip import mapping


def TestOneInput(data: bytes) -> None:
    try:
        msgspec.json.decode(data)
    except msgspec.DecodeError:
        return
    item = mapping.item_from_native("chan", data)
    out = mapping.native_data(item)
    assert out is not None
    msgspec.json.decode(out)


SEEDS = [b'"text"', b'{"a":[1,2.5,null,true]}', b'" 12 "', b"123", b'"\\u00ff\\n"']

if __name__ == "__main__":
    _harness.main(TestOneInput, SEEDS)
