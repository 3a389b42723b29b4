"""The bounds on everything a tenant controls about a listener, in one place.

A listener's owner chooses its URL, headers, retry schedule, timeout, rate limit and filter. Each
value ends up in a request line, a timestamp computation or a database query run on behalf of
every tenant, so each is bounded here and checked where it enters (the API, the dashboard, the
durian ``listener().save()`` builder, the admin) and checked again where it is used (the sender
and the store), since rows written before a bound existed, or by hand, must not break delivery.

The checks raise :class:`~clarion.errors.LimitError` with a message a person can act on; the
edges translate it (a 422 in the API, a form error in the dashboard, ``ValidationError`` on the
model). docs/topics/webhooks.md lists the same numbers in its limits table.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from clarion.errors import LimitError

MAX_URL_LENGTH = 2048
MAX_DESCRIPTION = 500
MAX_SCHEDULE_ENTRIES = 50
MAX_RETRY_DELAY = 86400.0  # one entry: a day (Svix's longest wait is 10 h)
MIN_TIMEOUT = 0.1
MAX_TIMEOUT = 300.0
MAX_RATE_LIMIT = 10_000  # deliveries per second to one listener
MAX_HEADERS = 20
MAX_HEADER_NAME = 256
MAX_HEADER_VALUE = 4096
MAX_FILTER_BYTES = 16 * 1024  # the filter's JSON
MAX_FILTER_DEPTH = 8  # nested matchers and field objects
MAX_FILTER_NODES = 200  # matchers and values in one filter
MAX_PATTERN_LENGTH = 1000  # one Like pattern

# RFC 9110 §5.1 (field-name = token) and §5.5 (field-value: visible characters, SP and HTAB
# inside, no white space at either end). obs-text (bytes 0x80-0xFF) is refused too: the RFC
# says senders must not generate it, and receivers read it in different charsets.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FIELD_VALUE = re.compile(r"(?:[\x21-\x7e](?:[\x20\x09\x21-\x7e]*[\x21-\x7e])?)?")
# The sender writes these itself; a listener's own copy would contradict the signed request
# or the framing.
RESERVED_HEADERS = ("content-type", "content-length", "host", "transfer-encoding",
                    "connection", "te", "trailer", "upgrade", "keep-alive", "webhook-")


def check_url_length(url: str) -> None:
    if len(url) > MAX_URL_LENGTH:
        raise LimitError(f"the URL is {len(url)} characters long; at most {MAX_URL_LENGTH}")


def check_header(name: Any, value: Any) -> None:
    """One extra request header: an RFC 9110 token, and a value HTTP/1.1 can carry."""
    if not isinstance(name, str) or not _TOKEN.fullmatch(name) or len(name) > MAX_HEADER_NAME:
        raise LimitError(f"{name!r} is not a valid header name (RFC 9110 token characters, "
                         f"at most {MAX_HEADER_NAME})")
    lower = name.lower()
    if lower in RESERVED_HEADERS or lower.startswith("webhook-"):
        raise LimitError(f"{name!r} is set by Clarion itself")
    if not isinstance(value, str):
        raise LimitError(f"{name!r}: the value must be text")
    if len(value) > MAX_HEADER_VALUE:
        raise LimitError(f"{name!r}: the value is longer than {MAX_HEADER_VALUE} characters")
    if not _FIELD_VALUE.fullmatch(value):
        raise LimitError(f"{name!r}: the value must be one line of visible ASCII characters "
                         "(no control characters, no leading or trailing spaces)")


def check_headers(headers: Any) -> dict[str, str]:
    if headers is None:
        return {}
    if not isinstance(headers, Mapping) or len(headers) > MAX_HEADERS:
        raise LimitError(f"must be an object of at most {MAX_HEADERS} name → value")
    seen: set[str] = set()
    for name, value in headers.items():
        check_header(name, value)
        if name.lower() in seen:
            raise LimitError(f"{name!r} is given twice (header names ignore case)")
        seen.add(name.lower())
    return dict(headers)


def check_schedule(schedule: Any) -> list[float] | None:
    """A retry schedule: seconds between attempts, each finite and within a day."""
    if schedule is None:
        return None
    if isinstance(schedule, str | bytes) or not isinstance(schedule, Sequence):
        raise LimitError(f"must be null or a list of at most {MAX_SCHEDULE_ENTRIES} numbers "
                         "of seconds")
    if len(schedule) > MAX_SCHEDULE_ENTRIES:
        raise LimitError(f"has {len(schedule)} entries; at most {MAX_SCHEDULE_ENTRIES}")
    for i, delay in enumerate(schedule):
        if isinstance(delay, bool) or not isinstance(delay, int | float):
            raise LimitError(f"entry {i} ({delay!r}) is not a number of seconds")
        if not math.isfinite(delay) or not 0 <= delay <= MAX_RETRY_DELAY:
            raise LimitError(f"entry {i} ({delay!r}) must be between 0 and "
                             f"{MAX_RETRY_DELAY:g} seconds")
    return list(schedule)


def check_timeout(timeout: Any) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not (
            math.isfinite(timeout) and MIN_TIMEOUT <= timeout <= MAX_TIMEOUT):
        raise LimitError(f"must be null or between {MIN_TIMEOUT:g} and {MAX_TIMEOUT:g} seconds")
    return float(timeout)


def check_rate_limit(rate: Any) -> int | None:
    if rate is None:
        return None
    if isinstance(rate, bool) or not isinstance(rate, int) or not 1 <= rate <= MAX_RATE_LIMIT:
        raise LimitError(f"must be null or a whole number from 1 to {MAX_RATE_LIMIT} per second")
    return rate


def check_filter_json(spec: Any) -> None:
    """The size of a filter before it is built: its JSON length, nesting and node count.

    Walked without recursion, so a hostile nesting depth cannot exhaust the stack before it is
    refused."""
    try:
        size = len(json.dumps(spec, separators=(",", ":"), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise LimitError(f"is not plain JSON: {exc}") from None
    except RecursionError:
        raise LimitError(f"is nested deeper than {MAX_FILTER_DEPTH} levels") from None
    if size > MAX_FILTER_BYTES:
        raise LimitError(f"is {size} bytes of JSON; at most {MAX_FILTER_BYTES}")
    nodes = 0
    stack: list[tuple[Any, int]] = [(spec, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_FILTER_DEPTH:
            raise LimitError(f"is nested deeper than {MAX_FILTER_DEPTH} levels")
        nodes += 1
        if nodes > MAX_FILTER_NODES:
            raise LimitError(f"has more than {MAX_FILTER_NODES} conditions and values")
        if isinstance(value, Mapping):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def check_pattern(pattern: str) -> None:
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise LimitError(f"the pattern is {len(pattern)} characters long; at most "
                         f"{MAX_PATTERN_LENGTH}")


def clamp_delay(seconds: float) -> float:
    """A next-attempt delay the store can add to a timestamp, whatever computed it."""
    if not math.isfinite(seconds) or seconds < 0:
        return 0.0 if seconds != math.inf else MAX_RETRY_DELAY
    return min(seconds, MAX_RETRY_DELAY)
