"""Which handler answers which path."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from clarion.hub.http import HttpProtocol, Request, Response, Takeover

if TYPE_CHECKING:
    from clarion.hub.app import Hub

Handler = Callable[[Request, HttpProtocol], Awaitable["Response | Takeover"]]


class Router:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.exact: dict[str, Handler] = {}
        self.prefixes: list[tuple[str, Handler]] = []

    def add(self, path: str, handler: Handler) -> None:
        self.exact[path] = handler

    def add_prefix(self, prefix: str, handler: Handler) -> None:
        self.prefixes.append((prefix, handler))

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
