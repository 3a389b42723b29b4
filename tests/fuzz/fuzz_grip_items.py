"""GRIP publish requests (``clarion.protocol.grip.items.parse_publish``: the body of
``POST /publish/``), and what the hub does with every item it accepts: the native form
(``mapping.native_data``) and the broker's encoding round trip. Documented error: GripError."""

from __future__ import annotations

import _harness

with _harness.instrumented():
    from clarion.errors import GripError
    from clarion.protocol.grip import items, mapping


def TestOneInput(data: bytes) -> None:
    try:
        parsed = items.parse_publish(data)
    except GripError:
        return
    for item in parsed:
        mapping.native_data(item)
        assert items.decode_item(items.encode_item(item)) == item
        f = item.formats
        assert f is not None
        if f.http_response is not None:
            f.http_response.header_pairs()


SEEDS = [
    b'{"items":[{"channel":"c","id":"1","prev-id":"0","meta":{"sender":"a"},'
    b'"formats":{"http-stream":{"content":"hi\\n"},"ws-message":{"content":"x"},'
    b'"http-response":{"code":200,"headers":[["A","b"]],"body-bin":"aGk="}}}]}',
    b'{"items":[{"channel":"c","http-stream":{"action":"close"}}]}',
    b'{"items":[{"channel":"c","ws-message":{"content-bin":"/w==","type":"binary"}},'
    b'{"channel":"d","http-response":{"body-patch":[{"op":"add","path":"/a","value":1}]}}]}',
]

if __name__ == "__main__":
    _harness.main(TestOneInput, SEEDS)
