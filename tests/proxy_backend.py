"""A small real app backend for the hub's proxies: a Starlette app under uvicorn on a free port,
in a thread of the test process, that records every request and answers as a test tells it.

    with ProxyBackend() as backend:
        backend.answer("connect", {"result": {"user": "42"}})
        ... hub configured with proxy_connect_endpoint = backend.url("connect") ...
        backend.requests("connect")  # [Recorded(body=..., headers=...)]
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from conftest import free_port


@dataclass
class Recorded:
    body: dict[str, Any]
    headers: dict[str, str]  # lower-cased names, as Starlette gives them


# What a test answers with: a JSON object (status 200), or a function of the request body
# giving (status, raw body), which may sleep (a slow backend).
Answer = dict[str, Any] | Callable[[dict[str, Any]], Awaitable[tuple[int, bytes]]]


class ProxyBackend:
    def __init__(self) -> None:
        self.port = free_port()
        self._answers: dict[str, Answer] = {}
        self._recorded: list[tuple[str, Recorded]] = []
        self._lock = threading.Lock()
        app = Starlette(routes=[Route("/proxy/{kind}", self._handle, methods=["POST"])])
        self._server = uvicorn.Server(uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off",
            timeout_graceful_shutdown=1))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def url(self, kind: str) -> str:
        return f"http://127.0.0.1:{self.port}/proxy/{kind}"

    def answer(self, kind: str, answer: Answer) -> None:
        self._answers[kind] = answer

    def requests(self, kind: str) -> list[Recorded]:
        with self._lock:
            return [r for k, r in self._recorded if k == kind]

    def clear(self) -> None:
        with self._lock:
            self._recorded.clear()

    async def _handle(self, request: Request) -> Response:
        kind = request.path_params["kind"]
        body = msgspec.json.decode(await request.body())
        with self._lock:
            self._recorded.append((kind, Recorded(body, dict(request.headers))))
        answer = self._answers.get(kind)
        if answer is None:
            return Response(b"no answer configured", 404)
        if callable(answer):
            status, raw = await answer(body)
            return Response(raw, status, media_type="application/json")
        return Response(msgspec.json.encode(answer), 200, media_type="application/json")

    def __enter__(self) -> ProxyBackend:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the proxy backend did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(10)


def sleeping(seconds: float, then: dict[str, Any]) -> Answer:
    """An answer that comes after ``seconds`` (a slow backend)."""
    async def answer(body: dict[str, Any]) -> tuple[int, bytes]:
        await asyncio.sleep(seconds)
        return 200, msgspec.json.encode(then)
    return answer


def raw(status: int, body: bytes) -> Answer:
    """An answer with this status and these bytes (garbage, an error page)."""
    async def answer(request: dict[str, Any]) -> tuple[int, bytes]:
        return status, body
    return answer
