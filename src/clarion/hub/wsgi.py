"""Serve a WSGI application under a path prefix of the hub's own HTTP server.

This is how ``clarion serve --webhooks-db`` offers the webhook API and dashboard (a Django app)
without a second server: the hub stays free of Django, it only knows WSGI. Calls run on a small
thread pool, so a slow view never blocks the event loop; bodies are already bounded by the
hub's ``max_body`` before they get here, and answers are collected in memory (the views served
this way answer JSON and HTML pages, not streams).
"""

from __future__ import annotations

import asyncio
import io
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from clarion.hub.http import HttpProtocol, Request, Response

_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer",
                         "upgrade", "proxy-connection"})

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class WsgiMount:
    def __init__(self, app: WsgiApp, *, host: str, port: int, threads: int = 4) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="clarion-wsgi")

    async def __call__(self, request: Request, http: HttpProtocol) -> Response:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._call, request)

    def _environ(self, request: Request) -> dict[str, Any]:
        environ: dict[str, Any] = {
            "REQUEST_METHOD": request.method,
            "SCRIPT_NAME": "",
            "PATH_INFO": request.path,
            "QUERY_STRING": request.query_string,
            "SERVER_NAME": self.host,
            "SERVER_PORT": str(self.port),
            "SERVER_PROTOCOL": "HTTP/1.1",
            # An address, never with a port (cutting at the last ":" broke IPv6 ones); behind
            # a trusted proxy, the client it forwarded for.
            "REMOTE_ADDR": request.client,
            "CONTENT_LENGTH": str(len(request.body)),
            "CONTENT_TYPE": request.headers.get("content-type", ""),
            "wsgi.version": (1, 0),
            # "https" over the hub's TLS or when a trusted proxy says so: Django's
            # is_secure(), secure cookies and CSRF's origin check depend on it.
            "wsgi.url_scheme": request.scheme,
            "wsgi.input": io.BytesIO(request.body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for name, value in request.raw_headers or request.headers.items():
            key = name.upper().replace("-", "_")
            if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                continue
            key = "HTTP_" + key
            environ[key] = f"{environ[key]},{value}" if key in environ else value
        return environ

    def _call(self, request: Request) -> Response:
        started: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]],
                           exc_info: Any = None) -> Callable[[bytes], None]:
            started["status"] = status
            started["headers"] = headers
            return chunks.append

        chunks: list[bytes] = []
        result = self.app(self._environ(request), start_response)
        try:
            chunks.extend(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        code, _, reason = started["status"].partition(" ")
        body = b"".join(chunks)
        content_type = ""
        headers = []
        for k, v in started["headers"]:
            name = k.lower()
            if name == "content-type":
                content_type = v
            elif name == "content-length":
                # The body as collected is the length sent, except for a HEAD an application
                # answered without a body: its Content-Length is that of the GET.
                if request.method == "HEAD" and not body:
                    headers.append((k, v))
            elif name not in _HOP_BY_HOP:  # the server's business (PEP 3333)
                headers.append((k, v))
        return Response(int(code), body, content_type, headers, reason)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
