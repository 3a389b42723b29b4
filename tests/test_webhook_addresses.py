"""The outgoing-webhook address policy (clarion.webhooks.addresses): URL parsing, the rule on one
IP address, and resolution, including the DNS-rebinding guard at connect time."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from clarion.errors import AddressRejected, ConfigError, WebhookError
from clarion.webhooks.addresses import AddressPolicy, Target

SETTING = "CLARION['WEBHOOKS']['ALLOWED_NETWORKS']"
DEFAULT = AddressPolicy()
PUBLIC_V4 = "93.184.215.14"
PUBLIC_V6 = "2606:4700:4700::1111"
# "127.0.0.1" in full-width digits and dots, which IDNA's nameprep folds back to ASCII
FULLWIDTH_LOOPBACK = "".join(chr(ord(c) + 0xFEE0) for c in "127.0.0.1")


def rejected(policy: AddressPolicy, ip: str) -> str:
    """The message check_ip gives for ``ip`` (which must be refused)."""
    with pytest.raises(AddressRejected) as info:
        policy.check_ip(ip)
    assert not policy.allows(ip)
    return str(info.value)


# -- one address: forbidden ranges --------------------------------------------------------------

# (address inside a forbidden range, a word the message must contain, the range it names)
FORBIDDEN_V4 = [
    ("0.0.0.0", "unspecified", "0.0.0.0/8"),
    ("0.255.255.255", "unspecified", "0.0.0.0/8"),
    ("10.0.0.0", "private", "10.0.0.0/8"),
    ("10.255.255.255", "private", "10.0.0.0/8"),
    ("100.64.0.0", "carrier-grade NAT", "100.64.0.0/10"),
    ("100.127.255.255", "carrier-grade NAT", "100.64.0.0/10"),
    ("127.0.0.1", "loopback", "127.0.0.0/8"),
    ("127.255.255.255", "loopback", "127.0.0.0/8"),
    ("169.254.0.0", "link-local", "169.254.0.0/16"),
    ("169.254.169.254", "link-local", "169.254.0.0/16"),
    ("172.16.0.0", "private", "172.16.0.0/12"),
    ("172.31.255.255", "private", "172.16.0.0/12"),
    ("192.0.0.0", "reserved", "192.0.0.0/24"),
    ("192.0.0.255", "reserved", "192.0.0.0/24"),
    ("192.0.2.1", "documentation", "192.0.2.0/24"),
    ("192.88.99.1", "reserved", "192.88.99.0/24"),
    ("192.168.0.0", "private", "192.168.0.0/16"),
    ("192.168.255.255", "private", "192.168.0.0/16"),
    ("198.18.0.0", "benchmarking", "198.18.0.0/15"),
    ("198.19.255.255", "benchmarking", "198.18.0.0/15"),
    ("198.51.100.7", "documentation", "198.51.100.0/24"),
    ("203.0.113.200", "documentation", "203.0.113.0/24"),
    ("224.0.0.1", "multicast", "224.0.0.0/4"),
    ("239.255.255.255", "multicast", "224.0.0.0/4"),
    ("240.0.0.1", "reserved", "240.0.0.0/4"),
    ("255.255.255.254", "reserved", "240.0.0.0/4"),
    ("255.255.255.255", "broadcast", "255.255.255.255/32"),
]

# Just outside each range: public addresses, allowed.
EDGES_V4 = [
    "1.0.0.0",
    "9.255.255.255",
    "11.0.0.0",
    "100.63.255.255",
    "100.128.0.0",
    "126.255.255.255",
    "128.0.0.0",
    "169.253.255.255",
    "169.255.0.0",
    "172.15.255.255",
    "172.32.0.0",
    "191.255.255.255",
    "192.0.1.0",
    "192.0.3.0",
    "192.88.98.255",
    "192.88.100.0",
    "192.167.255.255",
    "192.169.0.0",
    "198.17.255.255",
    "198.20.0.0",
    "198.51.99.255",
    "198.51.101.0",
    "203.0.112.255",
    "203.0.114.0",
    "223.255.255.255",
    "8.8.8.8",
    PUBLIC_V4,
]

FORBIDDEN_V6 = [
    ("::", "unspecified", "::/128"),
    ("::1", "loopback", "::1/128"),
    ("::a00:1", "IPv4-compatible", "::/96"),
    ("::808:808", "IPv4-compatible", "::/96"),  # even with a public IPv4 address inside
    ("64:ff9b:1::1", "local-use NAT64", "64:ff9b:1::/48"),
    ("64:ff9b:1:ffff:ffff:ffff:ffff:ffff", "local-use NAT64", "64:ff9b:1::/48"),
    ("2001::1", "Teredo", "2001::/32"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo", "2001::/32"),
    ("2001:db8::1", "documentation", "2001:db8::/32"),
    ("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", "documentation", "2001:db8::/32"),
    ("2001:2::1", "reserved", "2001::/23"),  # benchmarking, inside the IETF block
    ("2001:1ff:ffff::1", "reserved", "2001::/23"),
    ("3fff::1", "documentation", "3fff::/20"),
    ("100::1", "discard-only", "100::/64"),
    ("5f00::1", "SRv6", "5f00::/16"),
    ("fc00::1", "private", "fc00::/7"),
    ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "private", "fc00::/7"),
    ("fe80::1", "link-local", "fe80::/10"),
    ("febf:ffff::1", "link-local", "fe80::/10"),
    ("fec0::1", "site-local", "fec0::/10"),
    ("ff02::1", "multicast", "ff00::/8"),
    ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "multicast", "ff00::/8"),
    ("4000::1", "reserved", "2000::/3"),  # outside the global unicast space
    ("1::1", "reserved", "2000::/3"),
    ("fbff::1", "reserved", "2000::/3"),
]

EDGES_V6 = [
    PUBLIC_V6,
    "2001:4860:4860::8888",
    "2001:200::1",  # first address after 2001::/23
    "2001:db9::1",  # after 2001:db8::/32
    "2001:db7:ffff::1",
    "2003::1",  # after 2002::/16
    "3ffe:ffff::1",  # below 3fff::/20
]


@pytest.mark.parametrize(("ip", "word", "network"), FORBIDDEN_V4 + FORBIDDEN_V6)
def test_forbidden_ranges_are_refused_and_named(ip: str, word: str, network: str) -> None:
    message = rejected(DEFAULT, ip)
    assert message.startswith(f"{ip} is ")
    assert word in message
    assert network in message
    assert SETTING in message


@pytest.mark.parametrize("ip", EDGES_V4 + EDGES_V6)
def test_addresses_just_outside_the_ranges_are_allowed(ip: str) -> None:
    DEFAULT.check_ip(ip)
    assert DEFAULT.allows(ip)
    assert DEFAULT.allows(IPv4Address(ip) if "." in ip else IPv6Address(ip))


def test_check_ip_takes_address_objects_and_scoped_addresses() -> None:
    assert not DEFAULT.allows(IPv4Address("10.0.0.1"))
    assert DEFAULT.allows(IPv6Address(PUBLIC_V6))
    assert "link-local" in rejected(DEFAULT, "fe80::1%eth0")


@pytest.mark.parametrize("junk", ["", "example.com", "10.0.0.256", "1.2.3", "::g", "10.0.0.0/8"])
def test_check_ip_refuses_what_is_not_an_address(junk: str) -> None:
    assert "is not an IP address" in rejected(DEFAULT, junk)


def test_address_rejected_is_a_webhook_error() -> None:
    with pytest.raises(WebhookError):
        DEFAULT.check_ip("127.0.0.1")


# -- one address: IPv6 forms that carry an IPv4 address -----------------------------------------

EMBEDDED = [
    # (address, allowed by default, words in the message when refused)
    ("::ffff:10.0.0.1", False, ["IPv4-mapped", "10.0.0.1", "private"]),
    ("::ffff:127.0.0.1", False, ["IPv4-mapped", "127.0.0.1", "loopback"]),
    ("::ffff:169.254.169.254", False, ["IPv4-mapped", "169.254.169.254", "link-local"]),
    ("::ffff:0.0.0.0", False, ["IPv4-mapped", "0.0.0.0", "unspecified"]),
    ("::ffff:8.8.8.8", True, []),
    ("2002:0a00:0001::", False, ["6to4", "10.0.0.1", "private"]),
    ("2002:7f00:0001::1", False, ["6to4", "127.0.0.1", "loopback"]),
    ("2002:c0a8:0101:1::1", False, ["6to4", "192.168.1.1", "private"]),
    ("2002:0808:0808::", True, []),
    ("2002:0808:0808:1234::5", True, []),
    ("64:ff9b::7f00:1", False, ["NAT64", "127.0.0.1", "loopback"]),
    ("64:ff9b::a9fe:a9fe", False, ["NAT64", "169.254.169.254", "link-local"]),
    ("64:ff9b::e000:1", False, ["NAT64", "224.0.0.1", "multicast"]),
    ("64:ff9b::808:808", True, []),
]


@pytest.mark.parametrize(("ip", "allowed", "words"), EMBEDDED)
def test_embedded_ipv4_forms_are_judged_by_their_ipv4_address(
    ip: str, allowed: bool, words: list[str]
) -> None:
    assert DEFAULT.allows(ip) is allowed
    if not allowed:
        message = rejected(DEFAULT, ip)
        for word in words:
            assert word in message
        # The hint names the IPv4 address: that is what to allow-list.
        assert f"add {words[1]} to {SETTING}" in message


def test_ipv4_mapped_message_shows_the_ipv4_address_readably() -> None:
    assert rejected(DEFAULT, "::ffff:a00:1").startswith(
        "::ffff:10.0.0.1 is an IPv4-mapped address (::ffff:0:0/96) of 10.0.0.1, which is a "
        "private address (10.0.0.0/8); add 10.0.0.1 to "
    )


# -- one address: the allow-list ----------------------------------------------------------------


def test_allow_list_v4() -> None:
    policy = AddressPolicy(["10.0.0.0/8", IPv4Network("192.168.1.0/24")])
    assert policy.allows("10.1.2.3")
    assert policy.allows("192.168.1.77")
    assert not policy.allows("192.168.2.1")
    assert not policy.allows("172.16.0.1")
    assert policy.allows(PUBLIC_V4)  # public stays allowed
    assert policy.allowed_networks == (IPv4Network("10.0.0.0/8"), IPv4Network("192.168.1.0/24"))


def test_allow_list_v6() -> None:
    policy = AddressPolicy(["fd00::/8", IPv6Network("fe80::/64")])
    assert policy.allows("fd12:3456::1")
    assert policy.allows("fe80::1")
    assert not policy.allows("fc00::1")
    assert not policy.allows("::1")
    # v6 networks never match v4 addresses and the other way round
    assert not AddressPolicy(["::/0"]).allows("10.0.0.1")
    assert not AddressPolicy(["0.0.0.0/0"]).allows("::1")


def test_allow_list_single_addresses() -> None:
    policy = AddressPolicy(["10.0.0.5", "::1"])
    assert policy.allows("10.0.0.5")
    assert not policy.allows("10.0.0.6")
    assert policy.allows("::1")
    assert not policy.allows("127.0.0.1")


def test_allow_list_reaches_the_embedded_forms() -> None:
    policy = AddressPolicy(["127.0.0.0/8"])
    assert policy.allows("127.0.0.1")
    assert policy.allows("::ffff:127.0.0.1")
    assert policy.allows("64:ff9b::7f00:1")
    assert policy.allows("2002:7f00:0001::")
    assert not policy.allows("::1")
    assert not policy.allows("::ffff:10.0.0.1")
    # the deprecated IPv4-compatible form is never translated, so never judged by its IPv4
    assert not policy.allows("::7f00:1")


def test_allow_list_of_the_ipv6_form_itself() -> None:
    policy = AddressPolicy(["::ffff:10.0.0.0/104", "64:ff9b:1::/48"])
    assert policy.allows("::ffff:10.9.8.7")
    assert policy.allows("64:ff9b:1::5")
    assert not policy.allows("10.9.8.7")


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("10.0.0.0/33", ["'10.0.0.0/33'"]),
        ("not-a-network", ["'not-a-network'"]),
        ("10.0.0.5/8", ["'10.0.0.5/8'", "did you mean 10.0.0.0/8?"]),
        ("fd00::1/8", ["'fd00::1/8'", "did you mean fd00::/8?"]),
        ("", ["''"]),
        (42, ["42", "CIDR strings"]),
    ],
)
def test_bad_allowed_networks_are_config_errors(value: object, words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        AddressPolicy([value])  # type: ignore[list-item]
    message = str(info.value)
    assert "ALLOWED_NETWORKS" in message
    for word in words:
        assert word in message


def test_allowed_networks_as_a_bare_string_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"ALLOWED_NETWORKS.*must be a list"):
        AddressPolicy("10.0.0.0/8")


def test_dns_timeout_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="dns_timeout"):
        AddressPolicy(dns_timeout=0)


# -- property: an IPv4 address and its IPv6 carriers get the same verdict ----------------------

IPV4 = st.integers(min_value=0, max_value=2**32 - 1)
ALLOWING = AddressPolicy(["127.0.0.0/8", "10.0.0.0/8", "169.254.169.254", "fd00::/8"])
# Uniform draws rarely land in the small ranges, so those are always tried as well.
EDGE_INTS = [int(IPv4Address(ip)) for ip, _, _ in FORBIDDEN_V4] + [
    int(IPv4Address(ip)) for ip in EDGES_V4
]


def with_edges(test: Callable[[int], None]) -> Callable[[int], None]:
    for n in EDGE_INTS:
        test = example(n)(test)
    return test


@with_edges
@given(IPV4)
def test_ipv4_allowed_iff_its_mapped_form_is_allowed(n: int) -> None:
    v4 = IPv4Address(n)
    mapped = IPv6Address(f"::ffff:{v4}")
    for policy in (DEFAULT, ALLOWING):
        assert policy.allows(v4) == policy.allows(mapped) == policy.allows(str(mapped))


@with_edges
@given(IPV4)
def test_ipv4_allowed_iff_its_nat64_and_6to4_forms_are_allowed(n: int) -> None:
    v4 = IPv4Address(n)
    nat64 = IPv6Address((0x64FF9B << 96) | n)
    six_to_four = IPv6Address((0x2002 << 112) | (n << 80) | 1)
    for policy in (DEFAULT, ALLOWING):
        assert policy.allows(v4) == policy.allows(nat64) == policy.allows(six_to_four)


@given(IPV4)
def test_allows_and_check_ip_agree(n: int) -> None:
    ip = IPv4Address(n)
    try:
        DEFAULT.check_ip(ip)
    except AddressRejected:
        assert not DEFAULT.allows(ip)
    else:
        assert DEFAULT.allows(ip)


# -- parse_url ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://example.com", Target("https", "example.com", 443, "/", "example.com", False)),
        ("http://example.com/", Target("http", "example.com", 80, "/", "example.com", False)),
        (
            "HTTP://Example.COM:8080/Path/To?Q=1&r=%20#frag",
            Target("http", "example.com", 8080, "/Path/To?Q=1&r=%20", "example.com:8080", False),
        ),
        (
            "https://example.com:443/x",
            Target("https", "example.com", 443, "/x", "example.com", False),
        ),
        (
            "http://example.com:443/x",
            Target("http", "example.com", 443, "/x", "example.com:443", False),
        ),
        (
            "https://example.com:80/",
            Target("https", "example.com", 80, "/", "example.com:80", False),
        ),
        ("http://example.com:/", Target("http", "example.com", 80, "/", "example.com", False)),
        ("http://example.com:1/", Target("http", "example.com", 1, "/", "example.com:1", False)),
        (
            "http://example.com:65535/",
            Target("http", "example.com", 65535, "/", "example.com:65535", False),
        ),
        (
            "http://example.com?x=1",
            Target("http", "example.com", 80, "/?x=1", "example.com", False),
        ),
        ("http://example.com/#top", Target("http", "example.com", 80, "/", "example.com", False)),
        ("http://example.com/a?", Target("http", "example.com", 80, "/a", "example.com", False)),
        (
            f"http://[{PUBLIC_V6}]/hook",
            Target("http", PUBLIC_V6, 80, "/hook", f"[{PUBLIC_V6}]", True),
        ),
        (
            "https://[2606:4700:4700:0:0:0:0:1111]:8443/",
            Target("https", PUBLIC_V6, 8443, "/", f"[{PUBLIC_V6}]:8443", True),
        ),
        (
            "https://[2606:4700:4700::ABCD]/",
            Target("https", "2606:4700:4700::abcd", 443, "/", "[2606:4700:4700::abcd]", True),
        ),
        ("http://8.8.8.8/", Target("http", "8.8.8.8", 80, "/", "8.8.8.8", True)),
        (
            "http://[::ffff:808:808]/",
            Target("http", "::ffff:8.8.8.8", 80, "/", "[::ffff:8.8.8.8]", True),
        ),
        ("http://8.8.8.8:81/", Target("http", "8.8.8.8", 81, "/", "8.8.8.8:81", True)),
        ("http://8.8.8.8./", Target("http", "8.8.8.8", 80, "/", "8.8.8.8", True)),
        (
            "https://bücher.example/ä?ü=1",
            Target(
                "https",
                "xn--bcher-kva.example",
                443,
                "/%C3%A4?%C3%BC=1",
                "xn--bcher-kva.example",
                False,
            ),
        ),
        (
            "https://BÜCHER.Example:8443/",
            Target(
                "https", "xn--bcher-kva.example", 8443, "/", "xn--bcher-kva.example:8443", False
            ),
        ),
        (
            "https://xn--bcher-kva.example/",
            Target("https", "xn--bcher-kva.example", 443, "/", "xn--bcher-kva.example", False),
        ),
        ("http://example.com./", Target("http", "example.com.", 80, "/", "example.com.", False)),
        ("http://1.2.3.example/", Target("http", "1.2.3.example", 80, "/", "1.2.3.example", False)),
        ("http://ex_ample.com/", Target("http", "ex_ample.com", 80, "/", "ex_ample.com", False)),
        (
            "http://example.com/a|b\\c",
            Target("http", "example.com", 80, "/a%7Cb%5Cc", "example.com", False),
        ),
        (
            "http://example.com/p@th;x=1/%2F?a=b@c",
            Target("http", "example.com", 80, "/p@th;x=1/%2F?a=b@c", "example.com", False),
        ),
        ("http://notlocalhost/", Target("http", "notlocalhost", 80, "/", "notlocalhost", False)),
        (
            "http://localhost.example.com/",
            Target("http", "localhost.example.com", 80, "/", "localhost.example.com", False),
        ),
    ],
)
def test_parse_url_accepts(url: str, expected: Target) -> None:
    assert DEFAULT.parse_url(url) == expected


def test_target_is_frozen() -> None:
    target = DEFAULT.parse_url("https://example.com/")
    with pytest.raises(AttributeError):
        target.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("url", "words"),
    [
        # schemes
        ("ftp://example.com/", ["ftp://example.com/", "scheme 'ftp'", "http:// and https://"]),
        ("file:///etc/passwd", ["scheme 'file'"]),
        ("gopher://example.com:70/", ["scheme 'gopher'"]),
        ("javascript:alert(1)", ["scheme 'javascript'"]),
        ("ws://example.com/", ["scheme 'ws'"]),
        ("example.com/hook", ["no usable scheme"]),
        ("//example.com/hook", ["no usable scheme"]),
        ("", ["no usable scheme"]),
        # host
        ("http:///path", ["has no host"]),
        ("http://:8080/", ["has no host"]),
        ("http://?x=1", ["has no host"]),
        ("https://", ["has no host"]),
        ("http://[]/", ["not a valid"]),
        ("http://[example.com]/", ["not a valid"]),
        ("http://[8.8.8.8]/", ["not a valid"]),
        ("http://[::1/", ["not a valid URL"]),
        (f"http://[{PUBLIC_V6}]x/", ["unexpected 'x'"]),
        (f"http://{PUBLIC_V6}/", ["must be in brackets"]),
        ("http://example.com:80:81/", ["more than one ':'"]),
        ("http://[fe80::1%25eth0]/", ["zone identifiers"]),
        ("http://exa$mple.com/", ["not a valid name", "'$'"]),
        ("http://exa%41mple.com/", ["not a valid name", "'%'"]),
        ("http://a..b/", ["not a valid name"]),
        ("http://.example.com/", ["not a valid name"]),
        ("http://" + "a" * 64 + ".com/", ["not a valid name"]),
        ("http://" + "a." * 127 + "com/", ["not a valid name"]),
        ("http://" + "ä" * 70 + ".com/", ["not a valid internationalized domain name"]),
        # ports
        ("http://example.com:0/", ["port '0'", "1 to 65535"]),
        ("http://example.com:65536/", ["port '65536'"]),
        ("http://example.com:99999999999/", ["port '99999999999'"]),
        ("http://example.com:-1/", ["port '-1'"]),
        ("http://example.com:+80/", ["port '+80'"]),
        ("http://example.com:8O/", ["port '8O'"]),
        ("http://example.com:http/", ["port 'http'"]),
        ("http://example.com:٨٠/", ["port '٨٠'"]),
        # numeric host forms: refused whatever they mean
        ("http://2130706433/", ["'2130706433'", "dotted-decimal", "read it as 127.0.0.1"]),
        ("http://0x7f.1/", ["'0x7f.1'", "read it as 127.0.0.1"]),
        ("http://0x7f000001/", ["read it as 127.0.0.1"]),
        ("http://0X7F.0.0.1/", ["read it as 127.0.0.1"]),
        ("http://0177.0.0.1/", ["read it as 127.0.0.1"]),
        ("http://017700000001/", ["read it as 127.0.0.1"]),
        ("http://127.1/", ["read it as 127.0.0.1"]),
        ("http://127.0.1/", ["read it as 127.0.0.1"]),
        ("http://127.0.0.01/", ["read it as 127.0.0.1"]),
        ("http://169.254.43518/", ["read it as 169.254.169.254"]),
        ("http://134744072/", ["read it as 8.8.8.8"]),  # even a public address
        ("http://0/", ["read it as 0.0.0.0"]),
        ("http://1.2.3.4.5/", ["it is no address"]),
        ("http://256.1.1.1/", ["it is no address"]),
        ("http://08.0.0.1/", ["it is no address"]),
        ("http://example.0x/", ["dotted-decimal"]),
        ("http://example.123/", ["dotted-decimal"]),
        # IP literals: checked at once
        ("http://127.0.0.1/", ["127.0.0.1 is a loopback address"]),
        ("http://10.0.0.5:8080/x", ["10.0.0.5 is a private address (10.0.0.0/8)"]),
        ("http://169.254.169.254/latest/meta-data/", ["link-local"]),
        ("http://0.0.0.0/", ["unspecified"]),
        ("http://[::1]/", ["::1 is a loopback address"]),
        ("http://[::]/", ["unspecified"]),
        ("http://[::ffff:127.0.0.1]/", ["IPv4-mapped", "loopback"]),
        ("http://[64:ff9b::a9fe:a9fe]/", ["NAT64", "link-local"]),
        ("http://[fd00::1]/", ["private"]),
        (f"http://{FULLWIDTH_LOOPBACK}/", ["127.0.0.1 is a loopback address"]),
        # localhost names
        ("http://localhost/", ["'localhost' is a loopback name", SETTING]),
        ("http://LOCALHOST:8000/", ["'localhost' is a loopback name"]),
        ("http://localhost./", ["loopback name"]),
        ("http://api.localhost/", ["'api.localhost' is a loopback name"]),
        ("http://a.b.localhost:9/", ["loopback name"]),
        # whitespace and control characters, never silently stripped
        (" http://example.com/", ["whitespace or a control character", "U+0020 at position 0"]),
        ("http://example.com/ ", ["U+0020"]),
        ("http://exa mple.com/", ["U+0020"]),
        ("http://example.com/a b", ["U+0020"]),
        ("http://example.com/\t", ["U+0009"]),
        ("http://example.com/\r\nX-Injected: 1", ["U+000D"]),
        ("http://example.com/\n", ["U+000A"]),
        ("http://example.com/\x00", ["U+0000"]),
        ("http://example.com/\x7f", ["U+007F"]),
        ("http://example.com/\u00a0", ["U+00A0"]),
        ("http://example.com/\u3000", ["U+3000"]),
        ("http://exam\u200bple.com/", ["U+200B"]),
    ],
)
def test_parse_url_refuses(url: str, words: list[str]) -> None:
    with pytest.raises(AddressRejected) as info:
        DEFAULT.parse_url(url)
    message = str(info.value)
    for word in words:
        assert word in message, message


@pytest.mark.parametrize(
    "url",
    [
        "http://alice:s3cr3t@example.com/hook",
        "https://alice@example.com/",
        "https://:s3cr3t@example.com/",
        "https://@example.com/",
        "https://alice:s3cr3t@10.0.0.1/",
        "http://alice:s3cr3t@[::1]:80/",
        "http://example.com\\@127.0.0.1/",
    ],
)
def test_credentials_are_refused_and_never_echoed(url: str) -> None:
    with pytest.raises(AddressRejected) as info:
        DEFAULT.parse_url(url)
    message = str(info.value)
    assert "put credentials in a header instead" in message
    assert "***@" in message
    assert "alice" not in message
    assert "s3cr3t" not in message


@pytest.mark.parametrize(
    "url",
    [
        "ftp://alice:s3cr3t@example.com/",  # refused for its scheme first
        "alice:s3cr3t@example.com",  # parses as the scheme "alice"
        "http://alice:s3cr3t@example.com/" + "x" * 3000,  # refused for its length first
        "http://alice:s3cr3t@example.com/\n",  # refused for the newline first
        "https://alice:s3cr3t@example.com/",  # under https_only too
    ],
)
def test_credentials_are_not_echoed_by_other_errors(url: str) -> None:
    with pytest.raises(AddressRejected) as info:
        AddressPolicy(https_only=True).parse_url(url)
    message = str(info.value)
    assert "alice" not in message
    assert "s3cr3t" not in message


def test_https_only() -> None:
    policy = AddressPolicy(https_only=True)
    assert policy.https_only
    assert policy.parse_url("https://example.com/").scheme == "https"
    with pytest.raises(AddressRejected) as info:
        policy.parse_url("http://example.com/hook")
    assert str(info.value) == (
        "webhook URL http://example.com/hook uses plain http, and "
        "CLARION['WEBHOOKS']['HTTPS_ONLY'] is on; use https://"
    )
    assert DEFAULT.parse_url("http://example.com/").scheme == "http"


def test_url_length_limit() -> None:
    base = "https://example.com/"
    fits = base + "a" * (2048 - len(base))
    assert DEFAULT.parse_url(fits).target == "/" + "a" * (2048 - len(base))
    with pytest.raises(AddressRejected) as info:
        DEFAULT.parse_url(fits + "a")
    assert "2049 characters long; at most 2048 are allowed" in str(info.value)
    assert len(str(info.value)) < 200


def test_localhost_names_allowed_when_loopback_is() -> None:
    for networks in (["127.0.0.0/8"], ["::1/128"]):
        policy = AddressPolicy(networks)
        target = policy.parse_url("http://localhost:8000/hook")
        assert target == Target("http", "localhost", 8000, "/hook", "localhost:8000", False)
        assert policy.parse_url("http://api.localhost/").host == "api.localhost"


def test_allowed_ip_literals_pass_parse_url() -> None:
    policy = AddressPolicy(["10.0.0.0/8", "fd00::/8"])
    assert policy.parse_url("http://10.0.0.5:8080/x").host == "10.0.0.5"
    assert policy.parse_url("http://[fd00::5]/").host_header == "[fd00::5]"


def test_message_texts() -> None:
    assert rejected(DEFAULT, "10.0.0.5") == (
        "10.0.0.5 is a private address (10.0.0.0/8); "
        "add it to CLARION['WEBHOOKS']['ALLOWED_NETWORKS'] to allow it"
    )
    assert rejected(DEFAULT, "169.254.169.254") == (
        "169.254.169.254 is a link-local address (169.254.0.0/16, where cloud metadata services "
        "answer); add it to CLARION['WEBHOOKS']['ALLOWED_NETWORKS'] to allow it"
    )
    assert rejected(DEFAULT, "2002:0a00:0001::") == (
        "2002:a00:1:: is a 6to4 address (2002::/16) of 10.0.0.1, which is a private address "
        "(10.0.0.0/8); add 10.0.0.1 to CLARION['WEBHOOKS']['ALLOWED_NETWORKS'] to allow it"
    )
    assert rejected(DEFAULT, "64:ff9b::7f00:1") == (
        "64:ff9b::7f00:1 is a NAT64 address (64:ff9b::/96) of 127.0.0.1, which is a loopback "
        "address (127.0.0.0/8); add 127.0.0.1 to CLARION['WEBHOOKS']['ALLOWED_NETWORKS'] to "
        "allow it"
    )
    assert "100.64.0.1 is a carrier-grade NAT address (100.64.0.0/10)" in rejected(
        DEFAULT, "100.64.0.1"
    )
    with pytest.raises(AddressRejected) as info:
        DEFAULT.parse_url("ftp://example.com/x")
    assert str(info.value) == (
        "webhook URL ftp://example.com/x has the scheme 'ftp'; only http:// and https:// are "
        "allowed"
    )
    with pytest.raises(AddressRejected) as info:
        DEFAULT.parse_url("http://alice:pw@example.com/x")
    assert str(info.value) == (
        "webhook URL http://***@example.com/x has credentials in it (user:password@); they "
        "would be stored and logged with the URL: put credentials in a header instead"
    )


# -- resolve -----------------------------------------------------------------------------------


def name_target(host: str, port: int = 443) -> Target:
    """A Target for a name, made directly so that parse_url's static checks are bypassed and
    resolve() alone is what decides."""
    return Target("https", host, port, "/", host, False)


class ScriptedResolver:
    """A resolver that gives the next scripted answer each time and records what it was asked."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        return self.answers.pop(0)


async def test_localhost_really_resolves_and_is_refused_by_default() -> None:
    with pytest.raises(AddressRejected) as info:
        await DEFAULT.resolve(name_target("localhost"))
    message = str(info.value)
    assert message.startswith("localhost resolves only to forbidden addresses (")
    assert "127.0.0.1" in message or "::1" in message
    assert "loopback" in message


async def test_localhost_really_resolves_when_loopback_is_allowed() -> None:
    # A real server on the address resolve() returns: the caller connects to that address.
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        policy = AddressPolicy(["127.0.0.0/8", "::1/128"])
        target = policy.parse_url(f"http://localhost:{port}/hook")
        addresses = await policy.resolve(target)
        assert addresses
        assert set(addresses) <= {"127.0.0.1", "::1"}
        assert len(addresses) == len(set(addresses))
        assert "127.0.0.1" in addresses  # what getaddrinfo gives for localhost here
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await reader.read() == b""
        writer.close()
        # Only ::1 allowed: whatever 127.0.0.1 answers are dropped.
        v6_only = AddressPolicy(["::1/128"])
        try:
            assert await v6_only.resolve(target) == ["::1"]
        except AddressRejected as exc:  # this machine's localhost has no ::1
            assert "127.0.0.1" in str(exc)
    finally:
        server.close()
        await server.wait_closed()


async def test_unknown_name_cannot_be_resolved() -> None:
    policy = AddressPolicy(dns_timeout=3)
    with pytest.raises(AddressRejected, match=r"^cannot resolve no-such-host\.invalid: "):
        await policy.resolve(name_target("no-such-host.invalid"))


async def test_dns_rebinding_is_refused_at_send_time() -> None:
    # Public when the listener is saved and at the first delivery; 127.0.0.1 at the second.
    resolver = ScriptedResolver([PUBLIC_V4], ["127.0.0.1"], [PUBLIC_V4, "10.1.1.1"])
    policy = AddressPolicy(resolver=resolver)
    target = policy.parse_url("https://rebind.example:8443/hook")
    assert await policy.resolve(target) == [PUBLIC_V4]
    with pytest.raises(AddressRejected) as info:
        await policy.resolve(target)
    assert str(info.value) == (
        "rebind.example resolves only to forbidden addresses (127.0.0.1): 127.0.0.1 is a "
        "loopback address (127.0.0.0/8); add them to "
        "CLARION['WEBHOOKS']['ALLOWED_NETWORKS'] to allow them"
    )
    assert await policy.resolve(target) == [PUBLIC_V4]
    assert resolver.calls == [("rebind.example", 8443)] * 3


async def test_rebinding_to_an_ipv6_carrier_of_a_private_address_is_refused() -> None:
    policy = AddressPolicy(resolver=ScriptedResolver(["::ffff:169.254.169.254", "64:ff9b::a00:1"]))
    with pytest.raises(AddressRejected) as info:
        await policy.resolve(name_target("sneaky.example"))
    message = str(info.value)
    assert "(::ffff:169.254.169.254, 64:ff9b::a00:1)" in message
    assert "IPv4-mapped" in message and "link-local" in message


async def test_mixed_answers_keep_only_the_allowed_ones_in_order() -> None:
    answers = [
        "10.0.0.1",
        PUBLIC_V4,
        "127.0.0.1",
        PUBLIC_V6,
        PUBLIC_V4,  # repeated
        "2606:4700:4700:0::1111",  # the same address, spelt differently
        "fe80::1",
        "::ffff:8.8.8.8",
        "169.254.169.254",
        "not-an-address",
    ]
    policy = AddressPolicy(resolver=ScriptedResolver(answers))
    assert await policy.resolve(name_target("mixed.example")) == [
        PUBLIC_V4,
        PUBLIC_V6,
        "::ffff:8.8.8.8",
    ]


async def test_allow_list_applies_to_resolved_addresses() -> None:
    policy = AddressPolicy(
        ["10.0.0.0/8"], resolver=ScriptedResolver(["127.0.0.1", "10.2.3.4", "192.168.0.1"])
    )
    assert await policy.resolve(name_target("internal.example")) == ["10.2.3.4"]


async def test_all_forbidden_lists_them_and_the_first_reason() -> None:
    policy = AddressPolicy(resolver=ScriptedResolver(["10.0.0.1", "fd00::1", "10.0.0.1"]))
    with pytest.raises(AddressRejected) as info:
        await policy.resolve(name_target("private.example"))
    assert str(info.value).startswith(
        "private.example resolves only to forbidden addresses (10.0.0.1, fd00::1): "
        "10.0.0.1 is a private address (10.0.0.0/8)"
    )


async def test_no_answers() -> None:
    policy = AddressPolicy(resolver=ScriptedResolver([]))
    with pytest.raises(AddressRejected, match=r"^cannot resolve empty\.example: no addresses$"):
        await policy.resolve(name_target("empty.example"))


async def test_resolver_errors_become_address_rejected() -> None:
    async def failing(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    policy = AddressPolicy(resolver=failing)
    with pytest.raises(AddressRejected) as info:
        await policy.resolve(name_target("gone.example"))
    assert str(info.value) == "cannot resolve gone.example: Name or service not known"
    assert isinstance(info.value.__cause__, socket.gaierror)


async def test_resolver_timeout() -> None:
    async def slow(host: str, port: int) -> list[str]:
        await asyncio.sleep(30)
        return [PUBLIC_V4]

    policy = AddressPolicy(resolver=slow, dns_timeout=0.05)
    with pytest.raises(AddressRejected) as info:
        await policy.resolve(name_target("slow.example"))
    assert str(info.value) == "cannot resolve slow.example: no answer within 0.05 s"


async def test_ip_literals_skip_dns_but_are_checked_again() -> None:
    resolver = ScriptedResolver()
    policy = AddressPolicy(resolver=resolver)
    assert await policy.resolve(policy.parse_url("https://8.8.8.8/")) == ["8.8.8.8"]
    assert await policy.resolve(policy.parse_url(f"https://[{PUBLIC_V6}]/")) == [PUBLIC_V6]
    # A Target vetted by a looser policy is refused by a stricter one.
    loose = AddressPolicy(["10.0.0.0/8"]).parse_url("http://10.0.0.5/")
    with pytest.raises(AddressRejected, match="private"):
        await policy.resolve(loose)
    assert resolver.calls == []


async def test_resolver_gets_the_punycode_name_and_port() -> None:
    resolver = ScriptedResolver([PUBLIC_V4])
    policy = AddressPolicy(resolver=resolver)
    await policy.resolve(policy.parse_url("https://bücher.example:8443/"))
    assert resolver.calls == [("xn--bcher-kva.example", 8443)]
