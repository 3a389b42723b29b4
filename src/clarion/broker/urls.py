"""Broker URLs as they may appear in logs and error messages: without their secrets."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import parse_qsl, urlencode

__all__ = ["redact"]


def redact(url: str | Sequence[str]) -> str:
    """``url`` (or a list of them, comma-joined) with the password of its user part and every
    query parameter whose name contains ``password`` (``?password=``,
    ``?sentinel_password=``) replaced by ``***``."""
    if not isinstance(url, str):
        return ",".join(redact(u) for u in url)
    scheme, sep, rest = url.partition("://")
    rest, qmark, query = rest.partition("?")
    userinfo, at, hostpart = rest.rpartition("@")
    if at and ":" in userinfo:
        rest = f"{userinfo.partition(':')[0]}:***@{hostpart}"
    if qmark:
        pairs = [(k, "***" if "password" in k.lower() else v)
                 for k, v in parse_qsl(query, keep_blank_values=True)]
        query = urlencode(pairs, safe="*:,/")
    return f"{scheme}{sep}{rest}{qmark}{query}"
