"""Listener URLs (``clarion.webhooks.addresses.AddressPolicy.parse_url``), checked without DNS
when a subscription is saved. Documented error: AddressRejected, naming the URL and the rule.
A URL it accepts must give a request target and Host header with no space or control
character in them (they go on the request line as they are)."""

from __future__ import annotations

import _harness

with _harness.instrumented():
    from clarion.errors import AddressRejected
    from clarion.webhooks import addresses

POLICIES = [addresses.AddressPolicy(),
            addresses.AddressPolicy(["127.0.0.0/8", "::1/128", "10.0.0.0/8"], https_only=True)]


def TestOneInput(data: bytes) -> None:
    for text in _harness.text_forms(data):
        for url in (text, "http://" + text, "https://[" + text):
            for policy in POLICIES:
                try:
                    target = policy.parse_url(url)
                except AddressRejected:
                    continue
                for part in (target.target, target.host_header):
                    assert part.isascii() and part.isprintable() and " " not in part, target


SEEDS = [b"https://example.com:8443/hook?x=1", b"http://127.0.0.1/", b"http://[::ffff:10.0.0.1]/",
         b"http://0x7f.1/", b"http://\xef\xbc\x91\xef\xbc\x92\xef\xbc\x97.0.0.1/",
         b"https://user:pw@host/", b"http://b\xc3\xbccher.example/p\xc3\xa4th"]

if __name__ == "__main__":
    _harness.main(TestOneInput, SEEDS)
