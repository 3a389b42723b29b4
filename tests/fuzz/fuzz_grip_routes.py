"""Pushpin routes files (``clarion.protocol.grip.routes.parse_routes``) and matching requests
against them. Documented error: GripError (the proxy turns it into a ConfigError)."""

from __future__ import annotations

import _harness

with _harness.instrumented():
    from clarion.errors import GripError
    from clarion.protocol.grip import routes


def TestOneInput(data: bytes) -> None:
    _, text = _harness.text_forms(data)
    try:
        table = routes.parse_routes(text)
    except GripError:
        return
    for route in table.routes:
        assert route.targets
        for target in route.targets:
            assert 0 < target.port < 65536
            _ = target.address
        route.rewrite_path(text[:20])
        table.match(route.domain, route.path_beg + "/x", websocket=route.proto == "ws")
    table.match("[::1]", "/", websocket=False, tls=True)


SEEDS = [
    b"* 127.0.0.1:8001\n",
    b"example.com,path_beg=/api,replace_beg=/,proto=ws,ssl=no localhost:80,sub=c,over_http "
    b"[::1]:81,ssl=yes,insecure\n# comment\n*,id=x,path_rem=2,no_grip=0 h:1,host=y\n",
    b"*,debug,jsonp_x a:2,one_event",
]

if __name__ == "__main__":
    _harness.main(TestOneInput, SEEDS)
