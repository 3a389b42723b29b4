"""What the three test providers share: the HTTP server in a thread, the users, the knobs for
the error cases of issue 13 §4, and the login and approve/deny pages a browser drives."""

from __future__ import annotations

import contextlib
import html
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from flask import Flask, Response, redirect, request, session
from werkzeug.serving import BaseWSGIServer, make_server

# The pages' element ids, so browser tests do not depend on wording.
LOGIN_FORM = "#login-form"
APPROVE_BUTTON = "#approve"
DENY_BUTTON = "#deny"


@dataclass
class User:
    username: str
    password: str
    display_name: str
    email: str = ""
    # None: the provider says nothing about verification (no email_verified claim at all)
    email_verified: bool | None = None


def default_users() -> dict[str, User]:
    """alice has a verified email, bob an unverified one, carol none at all."""
    return {
        "alice": User("alice", "alice-password", "Alice Liddell", "alice@example.org", True),
        "bob": User("bob", "bob-password", "Bob Builder", "bob@example.org", False),
        "carol": User("carol", "carol-password", "Carol Danvers"),
    }


@dataclass
class Knobs:
    """Switches a test flips on a running provider (read on every request).

    - ``auto_approve``: a username; the authorize endpoint then approves at once as that user,
      without login or consent pages (for tests that use an HTTP client, not a browser).
    - ``auto_deny``: the authorize endpoint denies at once (as if the user clicked Deny).
    - ``refuse_registration``: client registration answers 403 with the provider's error shape.
    - ``token_endpoint``: "ok"; "down" (503 with an HTML proxy page, as a dead upstream behind a
      proxy gives); "garbage" (200 with an HTML body, not a token); "reset" (the connection is
      closed without an answer).
    - ``delay``: seconds every request waits before it is handled (a slow provider).
    - ``access_token_ttl``: seconds an OAuth 2 access token lives (refresh tests set it low).
    - ``no_oauth_endpoints``: discovery finds the host and the user but no OAuth endpoints
      (RFC 8414 metadata 404 and no issuer link; pump: host-meta without the OAuth links).
    """

    auto_approve: str | None = None
    auto_deny: bool = False
    refuse_registration: bool = False
    token_endpoint: str = "ok"
    delay: float = 0.0
    access_token_ttl: int = 3600
    no_oauth_endpoints: bool = False


@dataclass
class Provider:
    """A provider running on 127.0.0.1: its Flask app, its server thread and its state."""

    kind: str
    app: Flask
    users: dict[str, User]
    knobs: Knobs
    server: BaseWSGIServer | None = None
    thread: threading.Thread | None = None
    lock: threading.RLock = field(default_factory=threading.RLock)
    # the provider's own state (clients, tokens, notes...), for assertions and revocation
    state: Any = None
    requests_seen: list[tuple[str, str]] = field(default_factory=list)

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.server_port)

    @property
    def host(self) -> str:
        """``127.0.0.1:<port>``, the host part of this provider's accounts."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def acct(self, username: str) -> str:
        """``alice@127.0.0.1:<port>``: what a user types to connect."""
        return f"{username}@{self.host}"

    def paths_seen(self) -> list[str]:
        with self.lock:
            return [p for _, p in self.requests_seen]

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        if self.thread is not None:
            self.thread.join(10)


def start(provider: Provider) -> Provider:
    """Serve ``provider.app`` on a free 127.0.0.1 port in a daemon thread (threaded server)."""
    server = make_server("127.0.0.1", 0, provider.app, threaded=True)
    provider.server = server
    provider.thread = threading.Thread(target=server.serve_forever, args=(0.05,),
                                       name=f"provider-{provider.kind}",
                                       daemon=True)
    provider.thread.start()
    # serve_forever is listening once the socket accepts
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), \
                socket.create_connection(("127.0.0.1", provider.port), 1):
            break
        time.sleep(0.02)
    return provider


@contextlib.contextmanager
def running(provider: Provider) -> Iterator[Provider]:
    start(provider)
    try:
        yield provider
    finally:
        provider.stop()


class ResetConnection(Exception):
    """Raised in a view to close the client's connection without any answer."""


def new_app(kind: str, knobs: Knobs, seen: list[tuple[str, str]], lock: threading.RLock,
            token_paths: tuple[str, ...]) -> Flask:
    """A Flask app with a per-provider session cookie (browsers share cookies across the ports
    of 127.0.0.1), the ``delay`` knob and the token-endpoint knobs applied to ``token_paths``."""
    app = Flask(f"provider_{kind}")
    app.secret_key = secrets.token_hex(16)
    app.config["SESSION_COOKIE_NAME"] = f"provider_{kind}_{secrets.token_hex(4)}"

    @app.before_request
    def _knobs() -> Response | None:
        with lock:
            seen.append((request.method, request.path))
        if knobs.delay:
            time.sleep(knobs.delay)
        if request.path in token_paths and request.method == "POST":
            if knobs.token_endpoint == "down":
                return Response("<html><body><h1>503 Service Temporarily Unavailable</h1>"
                                "<hr><center>nginx</center></body></html>", 503,
                                content_type="text/html")
            if knobs.token_endpoint == "garbage":
                return Response("<html><body>Welcome to our new website!</body></html>", 200,
                                content_type="text/html")
            if knobs.token_endpoint == "reset":
                raise ResetConnection()
        return None

    @app.errorhandler(ResetConnection)
    def _reset(_: ResetConnection) -> Response:
        # Closing the socket under werkzeug: shut down the request's stream so the client reads
        # an empty answer (httpx raises RemoteProtocolError, as with a crashed upstream).
        stream = request.environ.get("werkzeug.socket")
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.shutdown(socket.SHUT_RDWR)
        return Response("", 500)

    return app


def new_provider(kind: str, users: dict[str, User], knobs: Knobs, state: Any,
                 token_paths: tuple[str, ...]) -> Provider:
    """A provider (not started) whose app is :func:`new_app`'s, sharing its lock and log."""
    seen: list[tuple[str, str]] = []
    lock = threading.RLock()
    app = new_app(kind, knobs, seen, lock, token_paths)
    return Provider(kind, app, users, knobs, lock=lock, state=state, requests_seen=seen)


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title></head>
<body><h1>{title}</h1>{body}</body></html>"""


def page(title: str, body: str, status: int = 200) -> Response:
    return Response(PAGE.format(title=html.escape(title), body=body), status,
                    content_type="text/html; charset=utf-8")


def current_user(users: dict[str, User]) -> User | None:
    name = session.get("user")
    return users.get(name) if isinstance(name, str) else None


def login_redirect() -> Response:
    return redirect("/login?" + urlencode({"next": request.full_path}))  # type: ignore[return-value]


def install_login(app: Flask, users: dict[str, User], provider_name: str) -> None:
    """/login (a username/password form) and /logout."""

    @app.route("/login", methods=["GET", "POST"])
    def login() -> Response:
        nxt = request.values.get("next", "/")
        if not nxt.startswith("/"):
            nxt = "/"
        error = ""
        if request.method == "POST":
            user = users.get(request.form.get("username", ""))
            if user is not None and secrets.compare_digest(
                    user.password, request.form.get("password", "")):
                session["user"] = user.username
                return redirect(nxt)  # type: ignore[return-value]
            error = '<p id="login-error">Wrong username or password.</p>'
        body = (f"<p>Log in to {html.escape(provider_name)}</p>{error}"
                '<form id="login-form" method="post" action="/login">'
                f'<input type="hidden" name="next" value="{html.escape(nxt)}">'
                '<label>Username <input name="username" id="username"></label>'
                '<label>Password <input name="password" id="password" type="password"></label>'
                '<button type="submit" id="login">Log in</button></form>')
        return page(f"Log in — {provider_name}", body, 200 if not error else 401)

    @app.route("/logout", methods=["POST", "GET"])
    def logout() -> Response:
        session.pop("user", None)
        return page("Logged out", "<p>You are logged out.</p>")


def consent_page(provider_name: str, client_name: str, user: User, scope: str,
                 hidden: dict[str, str], action: str) -> Response:
    """The approve/deny form; ``hidden`` carries the request's parameters back on POST."""
    fields = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                     for k, v in hidden.items())
    body = (f'<p id="consent">Logged in as <b id="who">{html.escape(user.username)}</b>. '
            f'<b id="client-name">{html.escape(client_name)}</b> asks to act for you on '
            f'{html.escape(provider_name)}'
            + (f' with scope <code id="scope">{html.escape(scope)}</code>' if scope else "")
            + f'.</p><form id="consent-form" method="post" action="{html.escape(action)}">'
            + fields
            + '<button type="submit" name="confirm" value="yes" id="approve">Approve</button>'
            '<button type="submit" name="confirm" value="no" id="deny">Deny</button></form>')
    return page(f"Authorize {client_name}", body)


def decision(knobs: Knobs, users: dict[str, User]) -> tuple[str, User | None]:
    """What the authorize endpoint does now: ("approve", user), ("deny", None),
    ("login", None) or ("ask", user)."""
    if knobs.auto_deny:
        return "deny", None
    if knobs.auto_approve:
        return "approve", users[knobs.auto_approve]
    user = current_user(users)
    if user is None:
        return "login", None
    if request.method == "POST":
        return ("approve", user) if request.form.get("confirm") == "yes" else ("deny", None)
    return "ask", user


def json_error(status: int, **body: Any) -> Response:
    import json

    return Response(json.dumps(body), status, content_type="application/json")


Hook = Callable[..., Any]
