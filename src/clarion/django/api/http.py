"""The HTTP plumbing of the subscriptions API: JSON in and out, errors, API-key auth, CSRF.

Every view is built by :func:`endpoint`, which maps methods to handlers. A handler raises
:class:`ApiError` for any client error; the wrapper turns it into a JSON body with the right
status, so no handler builds an error response by hand and every error looks the same::

    {"error": "validation failed", "errors": {"url": ["…"]}}
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from clarion.django.conf import webhook_settings

MAX_BODY = 1024 * 1024  # request bodies above 1 MiB get 413 (events are capped lower anyway)
MAX_DRAIN = 16 * MAX_BODY
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Writing last_used_at on every request would turn each GET into a write; a minute is precise
# enough to tell a used key from a forgotten one.
LAST_USED_PRECISION = timedelta(minutes=1)


class ApiError(Exception):
    """A client error: ``status``, a one-line ``message`` and optional per-field ``errors``."""

    def __init__(self, status: int, message: str, errors: Mapping[str, list[str]] | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = dict(errors or {})
        self.headers = dict(headers or {})

    def response(self) -> HttpResponse:
        body: dict[str, Any] = {"error": self.message}
        if self.errors:
            body["errors"] = self.errors
        response = JsonResponse(body, status=self.status)
        for name, value in self.headers.items():
            response[name] = value
        return response


def invalid(field: str, message: str) -> ApiError:
    """422 for one field, the usual validation failure."""
    return ApiError(422, "validation failed", {field: [message]})


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: the user, whether they see every owner's objects, and how they
    authenticated (``"key"`` or ``"session"``)."""

    user: Any
    sees_all: bool
    via: str

    def listeners(self, queryset: Any) -> Any:
        """Only the caller's own listeners, unless they see all."""
        return queryset if self.sees_all else queryset.filter(owner=self.user)

    def deliveries(self, queryset: Any) -> Any:
        """Only deliveries to the caller's own listeners, unless they see all."""
        return queryset if self.sees_all else queryset.filter(listener__owner=self.user)


def sees_all(user: Any) -> bool:
    """Staff see (and change) every owner's listeners, in the API and on the dashboard."""
    return bool(user.is_active and (user.is_staff or user.is_superuser))


class _CsrfCheck(CsrfViewMiddleware):  # type: ignore[misc]
    """Django's CSRF check, answering with the reason instead of a 403 page."""

    def _reject(self, request: HttpRequest, reason: str) -> str:
        return reason


def _no_response(request: HttpRequest) -> HttpResponse:
    raise AssertionError("never called")  # pragma: no cover


def authenticate(request: HttpRequest) -> Caller:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "use 'Authorization: Bearer <API key>'",
                           headers={"WWW-Authenticate": 'Bearer realm="clarion"'})
        from clarion.django.models import ApiKey

        key = ApiKey.authenticate(token.strip())
        if key is None or not key.owner.is_active:
            raise ApiError(401, "the API key is not valid (unknown, revoked or malformed)",
                           headers={"WWW-Authenticate":
                                    'Bearer realm="clarion", error="invalid_token"'})
        now = timezone.now()
        if key.last_used_at is None or now - key.last_used_at > LAST_USED_PRECISION:
            type(key).objects.filter(pk=key.pk).update(last_used_at=now)
        return Caller(key.owner, sees_all(key.owner), "key")
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        # A browser sends the session cookie on its own: unsafe methods must prove they come
        # from our pages. API keys are not ambient credentials, so they skip this.
        if request.method not in SAFE_METHODS:
            check = _CsrfCheck(_no_response)
            check.process_request(request)
            reason = check.process_view(request, None, (), {})
            if reason:
                raise ApiError(403, f"CSRF check failed: {reason}")
        return Caller(user, sees_all(user), "session")
    raise ApiError(401, "authentication required: send 'Authorization: Bearer <API key>'",
                   headers={"WWW-Authenticate": 'Bearer realm="clarion"'})


def read_json(request: HttpRequest, *, required: bool = True) -> dict[str, Any]:
    """The request body as a JSON object; 413 above :data:`MAX_BODY`, 400 if malformed."""
    length = request.META.get("CONTENT_LENGTH") or ""
    if length.isdigit() and int(length) > MAX_BODY:
        _drain(request, int(length))
        raise ApiError(413, f"the request body is over {MAX_BODY} bytes")
    environ = getattr(request, "environ", {})
    if hasattr(request, "_body"):
        raw = request.body
    elif not length and environ.get("wsgi.input_terminated"):
        # A chunked body under WSGI: Django reads no body without a Content-Length, but a
        # server that sets wsgi.input_terminated (gunicorn) ends the stream where the body does.
        stream = environ["wsgi.input"]
        raw = stream.read(MAX_BODY + 1)
        if len(raw) > MAX_BODY:
            _drain(stream, MAX_DRAIN)
    else:
        # At most one byte past the limit (under ASGI, Django has read the body already).
        raw = request.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise ApiError(413, f"the request body is over {MAX_BODY} bytes")
    if not raw.strip():
        if required:
            raise ApiError(400, "a JSON object body is required")
        return {}
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ApiError(400, "the body must be a JSON object")
    return value


def _drain(stream: Any, length: int) -> None:
    """Read and drop a refused body (up to :data:`MAX_DRAIN`): a server that closes with unread
    bytes makes the kernel reset the connection, and the client never sees the 413."""
    left = MAX_DRAIN
    while length <= MAX_DRAIN and left > 0:
        chunk = stream.read(64 * 1024)
        if not chunk:
            return
        left -= len(chunk)


def database() -> str:
    return webhook_settings().DATABASE


Handler = Callable[..., HttpResponse]


def endpoint(public: bool = False, **handlers: Handler) -> Callable[..., HttpResponse]:
    """A view dispatching on the method (``get=…, post=…``) to ``handler(request, caller,
    **url_kwargs)``; 405 with ``Allow`` for other methods. CSRF is checked in
    :func:`authenticate` for session callers only, hence ``csrf_exempt``."""
    allowed = {m.upper() for m in handlers}
    if "GET" in allowed:
        allowed.add("HEAD")
    allow = ", ".join(sorted(allowed))

    def view(request: HttpRequest, **kwargs: Any) -> HttpResponse:
        method = request.method or "GET"
        handler = handlers.get(method.lower()) or (handlers.get("get") if method == "HEAD"
                                                   else None)
        try:
            if handler is None:
                raise ApiError(405, f"{method} is not allowed here; use {allow}",
                               headers={"Allow": allow})
            if public:
                return handler(request, **kwargs)
            return handler(request, authenticate(request), **kwargs)
        except ApiError as exc:
            return exc.response()

    return csrf_exempt(view)  # type: ignore[no-any-return]


def ok(data: Any, status: int = 200) -> JsonResponse:
    return JsonResponse(data, status=status, safe=False,
                        json_dumps_params={"ensure_ascii": False})


def no_content() -> HttpResponse:
    return HttpResponse(status=204)
