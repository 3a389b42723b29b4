"""Where httpx meets the client: the request's URL and headers, and every answer or transport
failure translated into a result or one of ``clarion.errors``' Hub* exceptions."""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping
from typing import Any

import httpx
import msgspec

from clarion import __version__
from clarion.errors import HubError, HubReplyError, HubUnavailable

# Statuses that mean "not served now, try again later": a proxy could not reach the hub (502,
# 504) or the hub could not reach its broker (503). The call may have been applied regardless.
UNAVAILABLE = frozenset({502, 503, 504})


def api_base(url: str) -> str:
    """The hub's base URL with ``/api`` appended; ``…/api`` (cent's style) is accepted too."""
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, not {type(url).__name__}")
    parsed = httpx.URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"url must be the hub's http:// or https:// address, not {url!r}")
    base = url.rstrip("/")
    return base if base.endswith("/api") else base + "/api"


def check_timeout(timeout: float) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout must be seconds (a number), not {type(timeout).__name__}")
    if not (math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be a number of seconds > 0, not {timeout}")
    return float(timeout)


def headers(api_key: str | None, extra: Mapping[str, str] | None) -> dict[str, str]:
    out = {"content-type": "application/json", "user-agent": f"clarion-client/{__version__}"}
    out.update({name.lower(): value for name, value in (extra or {}).items()})
    if api_key is not None:
        if not isinstance(api_key, str) or not api_key:
            raise ValueError("api_key must be a non-empty str (None sends no key)")
        out["x-api-key"] = api_key
    return out


def transport_failure(exc: httpx.TransportError, method: str, url: str,
                      timeout: float) -> HubUnavailable:
    """A connection that could not be made or an answer that did not come in time."""
    if isinstance(exc, httpx.PoolTimeout):
        # Not the hub's fault: this client had more calls in flight than its pool has
        # connections, and this one waited its whole timeout for a free one.
        return HubUnavailable(
            f"{method}: no connection to the hub at {url} became free within {timeout:g}s: "
            f"too many calls in flight at once for the client's connection pool (PoolTimeout)")
    if isinstance(exc, httpx.TimeoutException):
        what = f"no answer within {timeout:g}s ({type(exc).__name__})"
    else:
        what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return HubUnavailable(f"{method}: the hub at {url} is unavailable: {what}")


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` in seconds from either of its forms (seconds, or an HTTP date);
    None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


class _Error(msgspec.Struct):
    code: int = 0
    message: str = ""
    fields: list[dict[str, Any]] = []


class _Answer(msgspec.Struct):
    result: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)
    error: _Error | None = None


class _Batch(msgspec.Struct):
    replies: list[dict[str, msgspec.Raw]] = []


def _answer(response: httpx.Response, method: str) -> _Answer:
    try:
        return msgspec.json.decode(response.content, type=_Answer)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        snippet = response.content[:200].decode(errors="replace")
        raise HubError(f"{method}: the answer (HTTP {response.status_code}) is not the hub's "
                       f"JSON ({exc}): {snippet!r}") from exc


def result(response: httpx.Response, method: str) -> bytes:
    """The raw ``result`` of a successful call; raises the call's error otherwise."""
    status = response.status_code
    if status in UNAVAILABLE:
        reason = response.reason_phrase or "unavailable"
        try:
            error = _answer(response, method).error
        except HubError:
            error = None  # a proxy's own error page
        if error is not None and error.message:
            reason = error.message
        raise HubUnavailable(f"{method}: the hub answered {status}: {reason}",
                             retry_after=retry_after(response.headers.get("retry-after")))
    answer = _answer(response, method)
    if answer.error is not None:
        raise HubReplyError(answer.error.code or status, answer.error.message,
                            status=status, fields=answer.error.fields)
    if status != 200:
        raise HubReplyError(status, response.reason_phrase or "error", status=status)
    return bytes(answer.result) or b"{}"


def batch_replies(response: httpx.Response) -> list[dict[str, msgspec.Raw]]:
    raw = result_free(response, "batch")
    try:
        return msgspec.json.decode(raw, type=_Batch).replies
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise HubError(f"batch: the answer is not the hub's JSON ({exc})") from exc


def result_free(response: httpx.Response, method: str) -> bytes:
    """The body of an answer that carries no ``result`` envelope (``batch``), after the same
    status and error checks as :func:`result`."""
    if response.status_code == 200:
        answer = _answer(response, method)
        if answer.error is not None:
            raise HubReplyError(answer.error.code or 200, answer.error.message,
                                fields=answer.error.fields)
        return response.content
    result(response, method)  # raises: every non-200 answer is an error
    raise HubError(f"{method}: unexpected answer (HTTP {response.status_code})")


def reply_error(raw: msgspec.Raw) -> HubReplyError:
    error = msgspec.json.decode(raw, type=_Error)
    return HubReplyError(error.code, error.message, fields=error.fields)


def malformed(method: str, exc: Exception) -> HubError:
    return HubError(f"{method}: the hub's result does not have the expected shape: {exc}")
