"""Where outgoing webhooks may go: the URL and address (SSRF) policy.

A webhook URL is chosen by whoever registers the listener, and the sender then makes requests
from inside the deployment's network. Without a policy that is a server-side request forgery
(SSRF) tool: ``http://169.254.169.254/`` reads the cloud metadata service, ``http://10.0.0.5/``
reaches an internal admin panel, ``http://localhost:6379/`` talks to Redis. So:

- :meth:`AddressPolicy.parse_url` makes the static checks that need no DNS (scheme, credentials,
  port, length, characters) and rejects IP-literal hosts that are not allowed right away, so a
  bad listener is refused when it is saved, with a message that says why.
- :meth:`AddressPolicy.resolve` is called by the transport **for every new connection**. It
  resolves the name itself, drops every forbidden address, and returns the rest; the transport
  then connects to one of those IPs, never to the name (DNS pinning). Checking a name when the
  listener is saved is not enough: its DNS answer can change afterwards (DNS rebinding, where a
  name answers with a public address at save time and ``127.0.0.1`` at send time). Checking the
  address that is actually dialled closes that gap.
- :meth:`AddressPolicy.check_ip` is the rule on one address: allowed if it is inside one of
  ``ALLOWED_NETWORKS``, or if it is globally routable unicast. IPv6 has several ways to carry an
  IPv4 address (IPv4-mapped ``::ffff:a.b.c.d``, NAT64 ``64:ff9b::a.b.c.d``, 6to4
  ``2002:AABB:CCDD::``), and a stack or gateway that honours them reaches the embedded IPv4
  address, so those are judged by the IPv4 address they carry: ``::ffff:127.0.0.1`` is loopback,
  ``::ffff:8.8.8.8`` is public.

Numeric host forms other than dotted decimal (``http://2130706433/``, ``http://0x7f.1/``,
``http://0177.0.0.1/``) are refused outright by :meth:`AddressPolicy.parse_url`, whatever address
they would mean: resolvers disagree about them (``inet_aton`` reads them as IPv4, others as
names), so a URL must say ``127.0.0.1`` if it means it. The rule for what counts as numeric is the
WHATWG URL standard's: a host whose last label is decimal digits or ``0x`` hex.

Only the standard library is used; this module does no I/O except the resolver call.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
from typing import Literal
from urllib.parse import quote, urlsplit

from clarion.errors import AddressRejected, ConfigError

__all__ = ["AddressPolicy", "Resolver", "Target"]

Resolver = Callable[[str, int], Awaitable[list[str]]]
"""``(host, port) -> [ip, ...]``: the DNS step, replaceable in tests."""

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

MAX_URL_LENGTH = 2048
DEFAULT_DNS_TIMEOUT = 5.0
_SETTING = "CLARION['WEBHOOKS']['ALLOWED_NETWORKS']"
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed, statically checked webhook URL: what the transport needs to send a request."""

    scheme: Literal["http", "https"]
    host: str  # lower-cased; IPv6 without brackets; IDNA-encoded (punycode) for non-ASCII names
    port: int
    target: str  # origin-form request target: path (default "/") + "?query"; fragment dropped
    host_header: str  # host, bracketed for IPv6, ":port" only when not the scheme's default
    literal: bool  # the host is an IP literal (no DNS lookup, no SNI)


@dataclass(frozen=True, slots=True)
class _Rule:
    network: IPNetwork
    kind: str  # noun phrase with its article: "a private", "an IPv4-compatible"
    note: str = ""

    def describe(self) -> str:
        extra = f", {self.note}" if self.note else ""
        return f"{self.kind} address ({self.network}{extra})"


def _v4(net: str, kind: str, note: str = "") -> _Rule:
    return _Rule(IPv4Network(net), kind, note)


def _v6(net: str, kind: str, note: str = "") -> _Rule:
    return _Rule(IPv6Network(net), kind, note)


# Checked in order, first match wins, so a narrow range comes before a wider one that holds it
# (255.255.255.255 inside 240/4). Python's ``is_global`` is consulted as well, after these, but is
# not relied on: its tables have changed between patch releases (3.11.7 calls 224.0.0.1 global).
_V4_RULES: tuple[_Rule, ...] = (
    _v4("0.0.0.0/8", "an unspecified", "'this network'"),
    _v4("10.0.0.0/8", "a private"),
    _v4("100.64.0.0/10", "a carrier-grade NAT"),
    _v4("127.0.0.0/8", "a loopback"),
    _v4("169.254.0.0/16", "a link-local", "where cloud metadata services answer"),
    _v4("172.16.0.0/12", "a private"),
    _v4("192.0.0.0/24", "a reserved", "IETF protocol assignments"),
    _v4("192.0.2.0/24", "a documentation"),
    _v4("192.88.99.0/24", "a reserved", "former 6to4 relay anycast"),
    _v4("192.168.0.0/16", "a private"),
    _v4("198.18.0.0/15", "a benchmarking"),
    _v4("198.51.100.0/24", "a documentation"),
    _v4("203.0.113.0/24", "a documentation"),
    _v4("224.0.0.0/4", "a multicast"),
    _v4("255.255.255.255/32", "a broadcast"),
    _v4("240.0.0.0/4", "a reserved", "future use"),
)

# The forms that carry an IPv4 address which a stack or gateway will actually reach; they are
# judged by that address (see _embedded_ipv4).
_MAPPED = IPv6Network("::ffff:0:0/96")
_NAT64 = IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR = IPv6Network("2002::/16")

_V6_RULES: tuple[_Rule, ...] = (
    _v6("::/128", "an unspecified"),
    _v6("::1/128", "a loopback"),
    # Deprecated (RFC 4291); nothing translates these to IPv4, and ::/96 also holds ::, ::1.
    _v6("::/96", "an IPv4-compatible", "deprecated"),
    _v6("64:ff9b:1::/48", "a local-use NAT64", "RFC 8215, translated to private addresses"),
    # Teredo hides the client's IPv4 address (obfuscated) and relays through a server: refuse it.
    _v6("2001::/32", "a Teredo"),
    _v6("2001:db8::/32", "a documentation"),
    # The rest of the IETF protocol assignments: benchmarking 2001:2::/48, ORCHID, AMT, ...
    _v6("2001::/23", "a reserved", "IETF protocol assignments"),
    _v6("3fff::/20", "a documentation"),
    _v6("100::/64", "a discard-only"),
    _v6("5f00::/16", "an SRv6 segment identifier"),
    _v6("fc00::/7", "a private", "unique local"),
    _v6("fe80::/10", "a link-local"),
    _v6("fec0::/10", "a site-local", "deprecated"),
    _v6("ff00::/8", "a multicast"),
)

# IANA allocates global unicast only from 2000::/3; everything else not named above is unassigned.
_GLOBAL_UNICAST_V6 = IPv6Network("2000::/3")

_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-._")
_HEX_RE = re.compile(r"^0[xX][0-9a-fA-F]*$")
# Characters that may not stand in a request target as they are: non-ASCII is handled by quote()
# itself, these ASCII ones are percent-encoded too, everything else printable is left alone
# (including existing %XX escapes, so nothing is double-encoded).
_TARGET_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"<>\\^`{|}')


def _redact(url: str) -> str:
    """``url`` with any userinfo replaced by ``***``, so no message ever shows a password."""
    # Without "//" there is no authority, but "user:pass@host" parses as the scheme "user", so
    # then everything before an "@" (up to the first "/?#") is treated as a secret.
    match = _SCHEME_RE.match(url)
    start = match.end() if match and url.startswith("//", match.end()) else 0
    if url.startswith("//", start):
        start += 2
    end = len(url)
    for stop in "/?#":
        found = url.find(stop, start)
        if found != -1:
            end = min(end, found)
    authority = url[start:end]
    if "@" not in authority:
        return url
    return url[:start] + "***@" + authority.rpartition("@")[2] + url[end:]


def _inet_aton(host: str) -> IPv4Address | None:
    """What BSD ``inet_aton`` (and so some ``getaddrinfo``) makes of a numeric host, or None.

    Only used to tell the user what a refused numeric host would have meant."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values: list[int] = []
    for part in parts:
        try:
            if _HEX_RE.match(part):
                values.append(int(part[2:] or "0", 16))
            elif len(part) > 1 and part.startswith("0"):
                values.append(int(part, 8))
            else:
                values.append(int(part, 10) if part.isascii() and part.isdigit() else -1)
        except ValueError:
            return None
    if any(v < 0 for v in values):
        return None
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):
        return None
    number = last
    for i, v in enumerate(head):
        number |= v << (8 * (3 - i))
    return IPv4Address(number)


def _is_numeric_host(host: str) -> bool:
    """The WHATWG URL standard's "ends in a number": such a host is an IPv4 address or invalid."""
    last = host.rsplit(".", 1)[-1]
    return bool(last) and ((last.isascii() and last.isdigit()) or bool(_HEX_RE.match(last)))


def _is_canonical_ipv4(host: str) -> bool:
    parts = host.split(".")
    return len(parts) == 4 and all(
        p.isascii() and p.isdigit() and (p == "0" or not p.startswith("0")) and int(p) <= 255
        for p in parts
    )


def _embedded_ipv4(ip: IPv6Address) -> tuple[str, IPv6Network, IPv4Address] | None:
    """The IPv4 address an IPv6 address delivers to, for the forms that really deliver there."""
    if ip in _MAPPED:
        # A dual-stack socket connecting to ::ffff:a.b.c.d sends IPv4 packets to a.b.c.d.
        return "an IPv4-mapped", _MAPPED, IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _NAT64:
        # A NAT64 gateway (RFC 6052) forwards 64:ff9b::a.b.c.d to a.b.c.d.
        return "a NAT64", _NAT64, IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _SIX_TO_FOUR:
        # 6to4 (RFC 3056) tunnels 2002:AABB:CCDD::/48 to the IPv4 host a.b.c.d.
        return "a 6to4", _SIX_TO_FOUR, IPv4Address((int(ip) >> 80) & 0xFFFFFFFF)
    return None


async def _getaddrinfo(host: str, port: int) -> list[str]:
    """The default resolver: the system's, as any client would use, IPv4 and IPv6 answers."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [
        str(sockaddr[0])
        for family, _type, _proto, _canon, sockaddr in infos
        if family in (socket.AF_INET, socket.AF_INET6)
    ]


class AddressPolicy:
    """Which webhook URLs and addresses are allowed. Built once from the settings
    ``CLARION['WEBHOOKS']['ALLOWED_NETWORKS']`` and ``['HTTPS_ONLY']`` and shared."""

    def __init__(
        self,
        allowed_networks: Iterable[str | IPv4Network | IPv6Network] = (),
        *,
        https_only: bool = False,
        dns_timeout: float = DEFAULT_DNS_TIMEOUT,
        resolver: Resolver | None = None,
    ) -> None:
        if isinstance(allowed_networks, str | bytes):
            # A lone string would otherwise be iterated character by character.
            raise ConfigError(
                f"{_SETTING} must be a list of networks such as ['10.0.0.0/8'], "
                f"not the string {allowed_networks!r}"
            )
        self.allowed_networks: tuple[IPNetwork, ...] = tuple(
            _parse_network(n) for n in allowed_networks
        )
        self.https_only = https_only
        if not dns_timeout > 0:
            raise ConfigError(
                f"dns_timeout must be a positive number of seconds, not {dns_timeout!r}"
            )
        self.dns_timeout = dns_timeout
        self._resolver: Resolver = resolver or _getaddrinfo

    # -- one address -------------------------------------------------------------------------

    def check_ip(self, ip: str | IPv4Address | IPv6Address) -> None:
        """Raise :class:`AddressRejected` unless ``ip`` is allowed; the message says why."""
        address = _as_ip(ip)
        reason = self._reason(address)
        if reason is not None:
            description, to_allow = reason
            raise AddressRejected(
                f"{_show(address)} is {description}; add "
                f"{'it' if to_allow == address else to_allow} to {_SETTING} to allow it"
            )

    def allows(self, ip: str | IPv4Address | IPv6Address) -> bool:
        """:meth:`check_ip` without raising."""
        try:
            return self._reason(_as_ip(ip)) is None
        except AddressRejected:
            return False

    def _reason(self, ip: IPAddress) -> tuple[str, IPAddress] | None:
        """None if ``ip`` is allowed, else (what it is, the address to allow-list to permit it)."""
        # The allow-list is absolute: it is the operator saying "this network is mine".
        if any(ip.version == net.version and ip in net for net in self.allowed_networks):
            return None
        if isinstance(ip, IPv4Address):
            for rule in _V4_RULES:
                if ip in rule.network:
                    return rule.describe(), ip
            if not ip.is_global:
                return "a non-global address (not globally routable)", ip
            return None
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            kind, network, inner = embedded
            # Decided by the IPv4 address alone (allow-list included): the IPv6 wrapper is only
            # the way there. Python calls some of these wrappers non-global regardless.
            inner_reason = self._reason(inner)
            if inner_reason is None:
                return None
            return f"{kind} address ({network}) of {inner}, which is {inner_reason[0]}", inner
        for rule in _V6_RULES:
            if ip in rule.network:
                return rule.describe(), ip
        if ip not in _GLOBAL_UNICAST_V6:
            return (
                f"a reserved address (outside {_GLOBAL_UNICAST_V6}, the global unicast space)",
                ip,
            )
        if not ip.is_global:
            return "a non-global address (not globally routable)", ip
        return None

    # -- a URL ---------------------------------------------------------------------------------

    def parse_url(self, url: str) -> Target:
        """Check ``url`` without DNS and split it into a :class:`Target`.

        Raises :class:`AddressRejected` naming the URL (credentials never shown) and the rule."""
        shown = _redact(url)
        if len(url) > MAX_URL_LENGTH:
            raise AddressRejected(
                f"webhook URL {shown[:80]}… is {len(url)} characters long; "
                f"at most {MAX_URL_LENGTH} are allowed"
            )
        for position, char in enumerate(url):
            # urlsplit() silently strips some of these (leading blanks, tabs, newlines), and a
            # newline in a request target would split the request: refuse rather than repair.
            if char.isspace() or not char.isprintable():
                raise AddressRejected(
                    f"webhook URL {shown[:200]!r} contains whitespace or a control character "
                    f"(U+{ord(char):04X} at position {position}); percent-encode it"
                )
        try:
            parts = urlsplit(url)
        except ValueError as exc:
            raise AddressRejected(f"webhook URL {shown} is not a valid URL: {exc}") from exc
        scheme = parts.scheme
        if scheme not in _DEFAULT_PORTS:
            if scheme and shown.lower().startswith(scheme + ":"):
                problem = f"has the scheme {scheme!r}"
            else:
                problem = "has no usable scheme"
            raise AddressRejected(
                f"webhook URL {shown} {problem}; only http:// and https:// are allowed"
            )
        if self.https_only and scheme != "https":
            raise AddressRejected(
                f"webhook URL {shown} uses plain http, and CLARION['WEBHOOKS']['HTTPS_ONLY'] "
                f"is on; use https://"
            )
        netloc = parts.netloc
        if "@" in netloc:
            raise AddressRejected(
                f"webhook URL {shown} has credentials in it (user:password@); they would be "
                f"stored and logged with the URL: put credentials in a header instead"
            )
        raw_host, port = _split_netloc(netloc, shown, _DEFAULT_PORTS[scheme])
        host, literal = self._check_host(raw_host, shown)
        is_v6 = literal and ":" in host
        bracketed = f"[{host}]" if is_v6 else host
        host_header = bracketed if port == _DEFAULT_PORTS[scheme] else f"{bracketed}:{port}"
        target = quote(parts.path or "/", safe=_TARGET_SAFE)
        if parts.query:
            target += "?" + quote(parts.query, safe=_TARGET_SAFE)
        return Target(
            scheme="https" if scheme == "https" else "http",
            host=host,
            port=port,
            target=target,
            host_header=host_header,
            literal=literal,
        )

    def _check_host(self, raw: str, shown: str) -> tuple[str, bool]:
        """(normalized host, is an IP literal) for the host part of a URL, or AddressRejected."""
        if not raw:
            raise AddressRejected(f"webhook URL {shown} has no host")
        if raw.startswith("["):
            inner = raw[1:-1]
            if "%" in inner:
                raise AddressRejected(
                    f"webhook URL {shown}: IPv6 zone identifiers ({raw}) are not supported"
                )
            try:
                v6 = IPv6Address(inner)
            except ValueError:
                raise AddressRejected(
                    f"webhook URL {shown}: {raw} is not a valid IPv6 address"
                ) from None
            self.check_ip(v6)
            return _show(v6), True
        host = raw
        if not host.isascii():
            try:
                # IDNA 2003 (the stdlib codec): nameprep folds case and width, so a host written
                # in full-width digits and dots becomes "127.0.0.1" here and is checked below.
                host = host.encode("idna").decode("ascii")
            except UnicodeError as exc:
                raise AddressRejected(
                    f"webhook URL {shown}: host {raw!r} is not a valid internationalized "
                    f"domain name ({exc})"
                ) from None
        host = host.lower()
        bare = host.removesuffix(".")  # "example.com." is the same name, absolute
        if _is_numeric_host(bare):
            if not _is_canonical_ipv4(bare):
                meaning = _inet_aton(bare)
                read_as = f"some resolvers read it as {meaning}" if meaning else "it is no address"
                raise AddressRejected(
                    f"webhook URL {shown}: host {raw!r} is not a dotted-decimal IPv4 address "
                    f"({read_as}); write IPv4 addresses as four decimal numbers, like 192.0.2.1"
                )
            self.check_ip(bare)
            return bare, True
        bad = sorted(set(host) - _HOST_CHARS)
        labels = bare.split(".")
        if bad or not all(0 < len(label) <= 63 for label in labels) or len(bare) > 253:
            detail = f"character {bad[0]!r}" if bad else "label lengths"
            raise AddressRejected(
                f"webhook URL {shown}: host {raw!r} is not a valid name ({detail})"
            )
        if (bare == "localhost" or bare.endswith(".localhost")) and not (
            self.allows("127.0.0.1") or self.allows("::1")
        ):
            # RFC 6761: these names are loopback by definition, whatever DNS says. resolve()
            # would refuse them too; saying so now gives the error when the listener is saved.
            raise AddressRejected(
                f"webhook URL {shown}: host {host!r} is a loopback name; add 127.0.0.0/8 "
                f"(and ::1/128) to {_SETTING} to allow it"
            )
        return host, False

    # -- DNS -------------------------------------------------------------------------------

    async def resolve(self, target: Target) -> list[str]:
        """The allowed addresses of ``target.host``, in the resolver's order, without repeats.

        Called for every new connection; the caller connects to these addresses and not to the
        name. Raises :class:`AddressRejected` if the name does not resolve, or resolves only to
        forbidden addresses (a DNS answer that changed to 127.0.0.1 after the listener was saved
        is refused here)."""
        if target.literal:
            # Re-checked: the Target may have been parsed by another policy, or before a change.
            self.check_ip(target.host)
            return [target.host]
        host = target.host
        try:
            # The default resolver runs getaddrinfo in a thread, which cannot be interrupted:
            # the timeout bounds how long a delivery waits, the thread finishes on its own.
            async with asyncio.timeout(self.dns_timeout):
                answers = await self._resolver(host, target.port)
        except TimeoutError as exc:
            raise AddressRejected(
                f"cannot resolve {host}: no answer within {self.dns_timeout:g} s"
            ) from exc
        except OSError as exc:  # socket.gaierror: unknown name, no network, ...
            raise AddressRejected(f"cannot resolve {host}: {exc.strerror or exc}") from exc
        allowed: list[str] = []
        refused: list[str] = []
        first_reason = ""
        seen: set[str] = set()
        for answer in answers:
            try:
                address = ip_address(answer)
            except ValueError:
                key, reason = str(answer), f"{answer!r} is not an IP address"
            else:
                key = _show(address)
                why = self._reason(address)
                reason = "" if why is None else f"{_show(address)} is {why[0]}"
            if key in seen:
                continue
            seen.add(key)
            if reason:
                refused.append(key)
                first_reason = first_reason or reason
            else:
                allowed.append(key)
        if allowed:
            return allowed
        if not refused:
            raise AddressRejected(f"cannot resolve {host}: no addresses")
        raise AddressRejected(
            f"{host} resolves only to forbidden addresses ({', '.join(refused)}): {first_reason}; "
            f"add them to {_SETTING} to allow them"
        )


def _as_ip(ip: str | IPv4Address | IPv6Address) -> IPAddress:
    if isinstance(ip, IPv4Address | IPv6Address):
        return ip
    try:
        return ip_address(ip)
    except ValueError:
        raise AddressRejected(f"{ip!r} is not an IP address") from None


def _show(ip: IPAddress) -> str:
    """``ip`` for messages: IPv4-mapped addresses as ``::ffff:10.0.0.1`` (Python 3.11 prints
    ``::ffff:a00:1``), so the IPv4 address in them can be read."""
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        return f"::ffff:{ip.ipv4_mapped}"
    return str(ip)


def _parse_network(value: str | IPv4Network | IPv6Network) -> IPNetwork:
    if isinstance(value, IPv4Network | IPv6Network):
        return value
    if not isinstance(value, str):
        raise ConfigError(
            f"{_SETTING}: {value!r} is not a network; write CIDR strings such as '10.0.0.0/8'"
        )
    try:
        return ip_network(value.strip())
    except ValueError as exc:
        hint = ""
        with contextlib.suppress(ValueError):
            # Host bits set ("10.0.0.5/8") is refused rather than silently widened: say which
            # network that would be, in case it was meant.
            hint = f"; did you mean {ip_network(value.strip(), strict=False)}?"
        raise ConfigError(
            f"{_SETTING}: {value!r} is not a valid CIDR network ({exc}){hint}"
        ) from None


def _split_netloc(netloc: str, shown: str, default_port: int) -> tuple[str, int]:
    """(host, port) from ``host``, ``host:port``, ``[v6]`` or ``[v6]:port``."""
    if netloc.startswith("["):
        close = netloc.find("]")
        if close == -1:
            raise AddressRejected(f"webhook URL {shown}: unclosed '[' in the host")
        host, rest = netloc[: close + 1], netloc[close + 1 :]
        if rest and not rest.startswith(":"):
            raise AddressRejected(f"webhook URL {shown}: unexpected {rest!r} after {host}")
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text_raw = netloc.partition(":")
        port_text = port_text_raw if colon else None
        if port_text is not None and ":" in port_text:
            raise AddressRejected(
                f"webhook URL {shown}: more than one ':' in the host; an IPv6 address in a URL "
                f"must be in brackets, like http://[2001:db8::1]/"
            )
    if not port_text:  # absent, or "host:" (an empty port means the default, RFC 3986)
        return host, default_port
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise AddressRejected(
            f"webhook URL {shown}: port {port_text!r} is not a number from 1 to 65535"
        )
    return host, int(port_text)
