"""Which proxies to believe, and who the client is behind them.

Only a peer listed in ``trusted_proxies`` may say who it forwards for. The chain it sends
(``X-Forwarded-For``, or ``Forwarded`` per RFC 7239) is read from the right: each hop was added
by the proxy to its right, so the rightmost address that is not itself a trusted proxy is the
last one a trusted proxy vouched for, and the client. Anything to its left was written by that
client and proves nothing. This is nginx's ``real_ip_recursive on`` and uvicorn's
``ProxyHeadersMiddleware``.

Only one header is read (``proxy_header``): a proxy that sets X-Forwarded-For passes a client's
own ``Forwarded`` through untouched, so believing both would believe the client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

__all__ = ["HEADERS", "Forwarded", "TrustedProxies", "parse_networks"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

HEADERS = ("x-forwarded-for", "forwarded")
# A chain longer than this is cut to its rightmost hops: no real path has as many proxies, and
# the walk must stay cheap whatever a client sends.
MAX_HOPS = 32
KNOWN_MAX = 4096  # addresses whose trust is remembered


def parse_networks(values: Sequence[str], name: str = "trusted_proxies") -> tuple[Network, ...]:
    """Addresses (``10.0.0.7``) and networks (``10.0.0.0/8``, ``fd00::/8``); a bad one is a
    ValueError that names it."""
    out: list[Network] = []
    for value in values:
        text = value.strip()
        if not text:
            continue
        try:
            out.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ValueError(f"{name}: {value!r} is not an IP address or network (like "
                             f"\"10.0.0.7\" or \"10.0.0.0/8\")") from None
    return tuple(out)


class Forwarded:
    """What a trusted peer said about a request: the client address, the scheme it used and
    the host it asked for ("" when the proxy kept the Host header as it was)."""

    __slots__ = ("client", "host", "scheme")

    def __init__(self, client: str, scheme: str, host: str = "") -> None:
        self.client = client
        self.scheme = scheme
        self.host = host


class TrustedProxies:
    """``trusted(peer)`` once per connection; ``resolve(peer, headers)`` per request from a
    trusted peer only."""

    __slots__ = ("_known", "header", "networks")

    def __init__(self, networks: Sequence[Network], header: str = "x-forwarded-for") -> None:
        if header not in HEADERS:
            raise ValueError(f"proxy_header: must be one of {', '.join(HEADERS)}")
        self.networks = tuple(networks)
        self.header = header
        # Answers for recent addresses: parsing one and testing it against every network
        # costs microseconds, on every request a proxy forwards. Cleared when full, so a
        # client that varies its forwarded address costs no more than without it.
        self._known: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusted(self, address: str) -> bool:
        if not self.networks or not address:
            return False
        known = self._known.get(address)
        if known is not None:
            return known
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            answer = False
        else:
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
            answer = any(ip in net for net in self.networks)
        if len(self._known) >= KNOWN_MAX:
            self._known.clear()
        self._known[address] = answer
        return answer

    def resolve(self, peer: str, headers: dict[str, str], scheme: str) -> Forwarded:
        """The client and scheme for a request that ``peer`` (a trusted proxy) forwarded.
        Without the header, the peer itself is the client (a health check from the proxy)."""
        if self.header == "forwarded":
            hops = _forwarded_hops(headers.get("forwarded", ""))
        else:
            hops = _xff_hops(headers.get("x-forwarded-for", ""),
                             headers.get("x-forwarded-proto", ""),
                             headers.get("x-forwarded-host", ""))
        client, client_scheme, client_host = peer, scheme, ""
        for address, proto, host in reversed(hops):
            client = address
            client_scheme = proto or client_scheme
            client_host = host or client_host
            if not self.trusted(address):
                break
        return Forwarded(client, client_scheme, client_host)


def _xff_hops(value: str, proto: str, host: str) -> list[tuple[str, str, str]]:
    # X-Forwarded-Proto and -Host are one value per proxy that set them, not one per hop: the
    # rightmost is what the nearest proxy saw, for the usual one proxy in front the client's.
    protos = [p.strip().lower() for p in proto.split(",") if p.strip()]
    last = protos[-1] if protos and protos[-1] in ("http", "https") else ""
    hosts = [h.strip() for h in host.split(",") if h.strip()]
    hops = [(_host(part), "", "") for part in _rightmost(value) if part.strip()]
    if hops:
        hops[-1] = (hops[-1][0], last, hosts[-1] if hosts else "")
    return hops


def _forwarded_hops(value: str) -> list[tuple[str, str, str]]:
    hops: list[tuple[str, str, str]] = []
    for element in _rightmost(value):
        address = proto = host = ""
        for pair in element.split(";"):
            key, sep, raw = pair.partition("=")
            if not sep:
                continue
            key = key.strip().lower()
            text = raw.strip().strip('"')
            if key == "for":
                address = _host(text)
            elif key == "proto" and text.lower() in ("http", "https"):
                proto = text.lower()
            elif key == "host":
                host = text
        if address:
            hops.append((address, proto, host))
    return hops


def _rightmost(value: str) -> list[str]:
    """The last ``MAX_HOPS`` comma-separated parts: only those are split and parsed, so a
    chain of thousands costs what one of 32 does."""
    parts = value.rsplit(",", MAX_HOPS)
    return parts[1:] if len(parts) > MAX_HOPS else parts


def _host(text: str) -> str:
    """``1.2.3.4``, ``1.2.3.4:80``, ``[::1]``, ``[::1]:80``, ``::1`` to the address; anything
    else (``unknown``, an obfuscated ``_hidden``) as it is, which no network matches."""
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        return text[1:end] if end > 0 else text
    if text.count(":") == 1:
        return text.partition(":")[0]
    return text
