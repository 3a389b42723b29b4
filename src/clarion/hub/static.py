"""Files served by the hub: the browser client and the demo page (package data, no disk paths)."""

from __future__ import annotations

from functools import cache
from importlib import resources

from clarion.hub.http import HttpProtocol, Request, Response

_TYPES = {".js": "text/javascript; charset=utf-8", ".html": "text/html; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}


@cache
def read(name: str) -> bytes | None:
    if "/" in name or name.startswith("."):
        return None
    path = resources.files("clarion.hub").joinpath("static", name)
    if not path.is_file():
        return None
    return path.read_bytes()


def file_response(name: str) -> Response:
    body = read(name)
    if body is None:
        return Response.error(404, f"no such file: {name}")
    suffix = name[name.rfind("."):]
    resp = Response(200, body, _TYPES.get(suffix, "application/octet-stream"))
    resp.headers.append(("cache-control", "no-cache"))
    # Public files, no credentials: a page on the Django app's origin loads clarion.js from
    # the hub as a module script, which browsers fetch with CORS.
    resp.headers.append(("access-control-allow-origin", "*"))
    return resp


async def handle_static(request: Request, http: HttpProtocol) -> Response:
    if request.method not in ("GET", "HEAD"):
        resp = Response.error(405, "use GET")
        resp.headers.append(("allow", "GET, HEAD"))
        return resp
    return file_response(request.path[len("/static/"):])
