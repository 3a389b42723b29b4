"""Which handler answers which path."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from clarion.hub.http import HttpProtocol, Request, Response, RunHandler, Takeover

if TYPE_CHECKING:
    from clarion.hub.app import Hub

Handler = Callable[[Request, HttpProtocol], Awaitable["Response | Takeover"]]


class Router:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.exact: dict[str, Handler] = {}
        self.prefixes: list[tuple[str, Handler]] = []
        self.runs: dict[str, RunHandler] = {}

    def add(self, path: str, handler: Handler) -> None:
        self.exact[path] = handler

    def add_prefix(self, prefix: str, handler: Handler) -> None:
        self.prefixes.append((prefix, handler))

    def add_run(self, path: str, handler: RunHandler) -> None:
        """Let ``handler`` answer a run of pipelined ``POST`` requests for ``path`` at once
        (one request alone still goes to the path's ordinary handler)."""
        self.runs[path] = handler

    def run_handler(self, request: Request) -> RunHandler | None:
        return self.runs.get(request.path) if request.method == "POST" else None

    async def dispatch(self, request: Request, http: HttpProtocol) -> Response | Takeover:
        handler = self.exact.get(request.path)
        if handler is None:
            for prefix, candidate in self.prefixes:
                if request.path.startswith(prefix):
                    handler = candidate
                    break
        if handler is None:
            return Response.error(404, f"no such endpoint: {request.path}")
        return await handler(request, http)
