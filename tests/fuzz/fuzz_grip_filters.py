"""Subscription filters (``clarion.protocol.grip.filters.apply``): a publication's content and
meta (JSON, so any text) against a subscriber's meta (Grip-Set-Meta, latin-1) and last ids.
Documented error: GripError, for a filter that cannot run."""

from __future__ import annotations

import contextlib

import _harness
import atheris

with _harness.instrumented():
    from clarion.errors import GripError
    from clarion.protocol.grip import filters, instruct

NAMES = sorted(instruct.FILTERS)


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    chosen = [NAMES[fdp.ConsumeIntInRange(0, len(NAMES) - 1)]
              for _ in range(fdp.ConsumeIntInRange(0, 5))]
    keys = ["user", "id_format", "id_encoding", "sender", "skip_users", "require_sub", "a"]

    def text(latin1: bool) -> str:
        raw = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 40))
        return raw.decode("latin-1") if latin1 else raw.decode("utf-8", "replace")

    sub_meta = {keys[fdp.ConsumeIntInRange(0, 6)]: text(True) for _ in range(4)}
    pub_meta = {keys[fdp.ConsumeIntInRange(0, 6)]: text(False) for _ in range(3)}
    last_ids = {text(False): (text(False) if fdp.ConsumeBool() else None)
                for _ in range(fdp.ConsumeIntInRange(0, 3))}
    content = fdp.ConsumeBytes(fdp.remaining_bytes())
    with contextlib.suppress(GripError):
        filters.apply(chosen, content, sub_meta, pub_meta, last_ids)


SEEDS = [
    b"\x00\x01\x02\x03\x04%(user)s and %I and %%" * 3,
    bytes(range(64)) + b"%(a)s %(x)s %q",
]

if __name__ == "__main__":
    _harness.main(TestOneInput, SEEDS)
