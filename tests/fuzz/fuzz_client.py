"""Centrifugo client-protocol frames (``clarion.protocol.client.decode_commands``): any bytes a
WebSocket client can send. Documented error: Disconnect (3501 bad request)."""

from __future__ import annotations

import _harness

with _harness.instrumented():
    from clarion.errors import Disconnect
    from clarion.protocol import client


def TestOneInput(data: bytes) -> None:
    try:
        commands = client.decode_commands(data)
    except Disconnect as exc:
        assert exc.code == 3501, exc
        return
    for command in commands:
        command.method()
        client.encode(command)


SEEDS = [
    b'{"id":1,"connect":{"token":"abc","name":"js"}}',
    b'{"id":2,"subscribe":{"channel":"chat:1","recover":true,"offset":5,"epoch":"x"}}\n'
    b'{"id":3,"publish":{"channel":"chat:1","data":{"text":"hi"}}}',
    b'{"id":4,"history":{"channel":"c","limit":10,"since":{"offset":1,"epoch":"e"}}}',
    b'{"id":5,"rpc":{"method":"m","data":[1,2,3]}}\n{}',
    b'{"id":6,"ping":{}}\n{"id":7,"sub_refresh":{"channel":"c","token":"t"}}',
    b'{"id":8,"presence_stats":{"channel":"c"},"send":{"data":null}}',
]

if __name__ == "__main__":
    _harness.main(TestOneInput, SEEDS)
