"""GRIP response instructions (``clarion.protocol.grip.instruct.parse``): an origin's status,
headers and body, in the header form and the ``application/grip-instruct`` JSON form.
Documented error: GripError.

Input layout: lines of ``name: value`` headers (latin-1, as the proxy reads them), a blank line,
then the body. The status is 200 so that the JSON form is reachable."""

from __future__ import annotations

import _harness

with _harness.instrumented():
    from clarion.errors import GripError
    from clarion.protocol.grip import instruct


def TestOneInput(data: bytes) -> None:
    head, _, body = data.partition(b"\n\n")
    pairs = []
    for line in head.decode("latin-1").split("\n"):
        name, _, value = line.partition(":")
        pairs.append((name.strip(), value.strip()))
    for code in (200, 404):
        try:
            inst = instruct.parse(code, "OK", list(pairs), body)
        except GripError:
            continue
        assert 100 <= inst.response.code <= 999
        if inst.hold is not None:
            assert inst.channels
            instruct.channel_header(inst.channels)
            instruct.hold_json(inst.hold, inst.channels, inst.response, inst.timeout,
                               inst.keep_alive, inst.meta)
        if inst.keep_alive is not None:
            instruct.keep_alive_header(inst.keep_alive.content, inst.keep_alive.timeout,
                                       inst.keep_alive.mode)
        instruct.set_meta_header(inst.meta)


SEEDS = [
    b"Grip-Hold: stream\nGrip-Channel: a; prev-id=1; filter=skip-self, b\n"
    b"Grip-Keep-Alive: \\n; format=cstring; timeout=20; mode=interval\n"
    b"Grip-Set-Meta: user=bob, id_format=\"%(a)s\"\nGrip-Status: 201 Made\n"
    b"Grip-Link: <http://x/next>; rel=next; timeout=30, <http://x/g>; rel=gone\n"
    b"Grip-Expose-Headers: X-A\nX-A: 1\n\nbody",
    b"Content-Type: application/grip-instruct\n\n"
    b'{"hold":{"mode":"response","channels":[{"name":"c","prev-id":"1","filters":["build-id"]}],'
    b'"timeout":30,"keep-alive":{"content-bin":"aGk=","timeout":5},"meta":{"a":"b"}},'
    b'"response":{"code":200,"reason":"OK","headers":{"X":"y"},"body":"hi"}}',
    b"Grip-Hold: response\nGrip-Channel: c\nGrip-Timeout: 7\n\n",
]

if __name__ == "__main__":
    _harness.main(TestOneInput, SEEDS)
