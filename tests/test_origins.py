"""clarion.hub.origins: what counts as the hub's own origin and how allowed_origins patterns
match (pure functions; the WebSocket-level checks are in test_production_limits.py)."""

from __future__ import annotations

import pytest

from clarion.hub.http import Request
from clarion.hub.origins import matches, normal_origin, origin_key, same_origin


def _request(host: str, scheme: str = "http") -> Request:
    return Request(method="GET", path="/", query_string="", headers={"host": host},
                   body=b"", client="127.0.0.1", scheme=scheme)


@pytest.mark.parametrize(("origin", "key"), [
    ("https://Example.COM", ("https", "example.com", 443)),
    ("http://example.com:80", ("http", "example.com", 80)),
    ("http://example.com:8000", ("http", "example.com", 8000)),
    ("null", None), ("file://x", None), ("http://", None), ("http://h:99999", None),
])
def test_origin_key(origin: str, key: tuple[str, str, int] | None) -> None:
    assert origin_key(origin) == key


@pytest.mark.parametrize(("origin", "host", "scheme", "same"), [
    ("https://chat.example.com", "chat.example.com", "https", True),
    ("https://chat.example.com:443", "chat.example.com", "https", True),
    ("http://chat.example.com", "chat.example.com", "https", False),  # another origin
    ("https://chat.example.com", "chat.example.com:8443", "https", False),
    ("https://evil.example", "chat.example.com", "https", False),
    ("https://chat.example.com", "", "https", False),
])
def test_same_origin(origin: str, host: str, scheme: str, same: bool) -> None:
    assert same_origin(origin, _request(host, scheme)) is same


def test_patterns_match_the_whole_origin_without_default_ports_or_case() -> None:
    assert normal_origin("HTTPS://A.example:443") == "https://a.example"
    assert matches("https://app.example", ["https://*.example"])
    assert matches("https://APP.example:443", ["https://*.example"])
    assert not matches("http://app.example", ["https://*.example"])
    assert not matches("https://app.example.evil", ["https://*.example"])
