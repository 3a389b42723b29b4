"""``Retry-After`` from a receiver's answer (``clarion.webhooks.retry.parse_retry_after``):
delta-seconds or an HTTP date. Documented: None when absent or unreadable; it never raises, and
a delay it returns is never negative."""

from __future__ import annotations

import math

import _harness

with _harness.instrumented():
    from clarion.webhooks import retry

NOW = 1_700_000_000.0


def TestOneInput(data: bytes) -> None:
    for text in _harness.text_forms(data):
        delay = retry.parse_retry_after(text, NOW)
        assert delay is None or delay >= 0 or math.isnan(delay), delay
        policy = retry.RetryPolicy()
        if delay is not None:
            policy.delay(1, retry.Outcome.OVERLOAD, delay, rand=lambda: 0.5)


SEEDS = [b"120", b"Wed, 21 Oct 2015 07:28:00 GMT", b"Sun, 06 Nov 1994 08:49:37 +0100",
         b"  7 ", b"Monday, 01-Jan-99 00:00:00 GMT"]

if __name__ == "__main__":
    _harness.main(TestOneInput, SEEDS)
