"""The hub's configuration loader (``clarion.hub.config.load_config``): any bytes as the TOML
file, plus ``CLARION_*`` environment values. Documented error: ConfigError, whose message the
command line prints before exiting with status 2."""

from __future__ import annotations

import os
import tempfile

import _harness

with _harness.instrumented():
    from clarion.errors import ConfigError
    from clarion.hub import config

_DIR = tempfile.mkdtemp(prefix="clarion-fuzz-config-")
_PATH = os.path.join(_DIR, "clarion.toml")
_FIELDS = sorted(f for f in config.Config.__struct_fields__ if f != "namespaces")


def TestOneInput(data: bytes) -> None:
    toml, _, env_text = data.partition(b"\x00")
    with open(_PATH, "wb") as fh:
        fh.write(toml)
    environ = {}
    for i, line in enumerate(env_text.decode("utf-8", "replace").split("\n")[:4]):
        if line:
            environ["CLARION_" + _FIELDS[(len(line) * 7 + i) % len(_FIELDS)].upper()] = line
    for env in ({}, environ):
        try:
            cfg = config.load_config(_PATH, environ=env)
        except ConfigError:
            continue
        cfg.seconds("ping_interval")


SEEDS = [
    b'port = 8001\napi_key = "k"\nping_interval = "25s"\nhistory_size = 10\nhistory_ttl = "5m"\n'
    b'[namespaces.chat]\npresence = true\nhistory_size = 5\nhistory_ttl = 30\n'
    b'force_recovery = true\nchannel_regex = "^[a-z]+$"\n',
    b'allowed_origins = ["http://a"]\n\x00300ms\ntrue\n1.5h',
    b"[namespaces]\n\x00x",
]

if __name__ == "__main__":
    _harness.main(TestOneInput, SEEDS)
