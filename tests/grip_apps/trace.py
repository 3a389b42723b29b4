"""Logs every request the origin gets (as the proxy sent it) and the response it gives (after
the GRIP middleware), one block each, to stderr: the origin's log is shown when a test fails,
and it is how one sees exactly what a GRIP proxy sends (Grip-Sig, WebSocket-over-HTTP events)."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable

from django.http import HttpRequest, HttpResponseBase

_lock = threading.Lock()
LIMIT = 600


def _headers(request: HttpRequest) -> list[str]:
    out = []
    for key, value in sorted(request.META.items()):
        if key.startswith("HTTP_"):
            out.append(f"{key[5:].replace('_', '-').title()}: {value}")
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            out.append(f"{key.replace('_', '-').title()}: {value}")
    return out


def _body(data: bytes) -> str:
    return repr(data[:LIMIT]) + (f" ... ({len(data)} bytes)" if len(data) > LIMIT else "")


class TraceMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        query = request.META.get("QUERY_STRING", "")
        lines = [f">>> {request.method} {request.path}" + (f"?{query}" if query else "")]
        lines += [f"    {h}" for h in _headers(request)]
        if request.method == "POST":
            lines.append(f"    body: {_body(request.body)}")
        response = self.get_response(request)
        lines.append(f"<<< {response.status_code} {response.reason_phrase}")
        lines += [f"    {k}: {v}" for k, v in response.items()]
        if not response.streaming:
            lines.append(f"    body: {_body(response.content)}")  # type: ignore[attr-defined]
        with _lock:
            print("\n".join(lines), file=sys.stderr, flush=True)
        return response
