"""A generic OAuth 2 provider built with authlib's Flask AuthorizationServer.

Authorization code with PKCE (S256 required), refresh tokens (rotated), RFC 7009 revocation,
RFC 8414 metadata at /.well-known/oauth-authorization-server, RFC 7591 registration at
/oauth/register, WebFinger (RFC 7033) with a profile-page link and OpenID Connect's issuer link,
/userinfo (scope "profile"; email and email_verified with scope "email") and /api/notes (scope
"notes"). See tests/providers/__init__.py for users and knobs.
"""

from __future__ import annotations

import html
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from authlib.common.security import generate_token
from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector, current_token
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7591 import ClientRegistrationEndpoint
from flask import Response, request

from . import base
from .base import Knobs, Provider, User
from .oauth2_models import (
    Client,
    S256Required,
    Store,
    make_bearer_validator,
    make_code_grant,
    make_refresh_grant,
    make_revocation_endpoint,
    make_save_token,
)

ISSUER_REL = "http://openid.net/specs/connect/1.0/issuer"
PROFILE_REL = "http://webfinger.net/rel/profile-page"
SCOPES = ["profile", "email", "notes"]
NAME = "Example OAuth 2 Server"


def base_url() -> str:
    return request.host_url.rstrip("/")


def metadata() -> dict[str, Any]:
    """RFC 8414 §2 for this server, with OpenID's userinfo_endpoint as an extension."""
    b = base_url()
    return {
        "issuer": b,
        "authorization_endpoint": f"{b}/oauth/authorize",
        "token_endpoint": f"{b}/oauth/token",
        "revocation_endpoint": f"{b}/oauth/revoke",
        "registration_endpoint": f"{b}/oauth/register",
        "userinfo_endpoint": f"{b}/userinfo",
        "scopes_supported": SCOPES,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post",
                                                  "none"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic",
                                                       "client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
        "service_documentation": f"{b}/docs",
    }


def jrd(body: dict[str, Any], status: int = 200) -> Response:
    r = Response(json.dumps(body), status, content_type="application/jrd+json")
    r.headers["Access-Control-Allow-Origin"] = "*"  # RFC 7033 §5
    return r


def user_from_resource(resource: str, users: dict[str, User]) -> User | None:
    """acct:alice@host, alice@host, or the profile URL http://host/users/alice."""
    host = request.host.lower()
    if resource.startswith(("http://", "https://")):
        parts = urlsplit(resource)
        if parts.netloc.lower() != host or not parts.path.startswith("/users/"):
            return None
        return users.get(parts.path[len("/users/"):])
    if resource.startswith("acct:"):
        resource = resource[len("acct:"):]
    name, sep, rhost = resource.rpartition("@")
    if not sep or rhost.lower() != host:
        return None
    return users.get(name.lstrip("@"))


def webfinger_links(links: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rels = request.args.getlist("rel")  # RFC 7033 §4.3: rel filters links, nothing else
    return [link for link in links if not rels or link["rel"] in rels]


def build(users: dict[str, User] | None = None, knobs: Knobs | None = None) -> Provider:
    users = users if users is not None else base.default_users()
    knobs = knobs or Knobs()
    store = Store(users)
    provider = base.new_provider("oauth2", users, knobs, store, ("/oauth/token",))
    app = provider.app

    server = AuthorizationServer(app, query_client=store.query_client,
                                 save_token=make_save_token(store, lambda: knobs.access_token_ttl))
    # the access_token_ttl knob is read for every token issued
    server.register_token_generator("default", BearerTokenGenerator(
        lambda **_: generate_token(42), lambda **_: generate_token(48),
        lambda client, grant_type: knobs.access_token_ttl))
    server.register_grant(make_code_grant(store, ["client_secret_basic", "client_secret_post",
                                                  "none"]), [S256Required(required=True)])
    server.register_grant(make_refresh_grant(store))
    server.register_endpoint(make_revocation_endpoint(store))

    class Registration(ClientRegistrationEndpoint):  # type: ignore[misc]
        def authenticate_token(self, req: Any) -> bool:
            return True  # open registration, as the issue's "any OAuth 2 server" expects

        def get_server_metadata(self) -> dict[str, Any]:
            return metadata()

        def save_client(self, client_info: dict[str, Any], client_metadata: dict[str, Any],
                        req: Any) -> Client:
            method = client_metadata.get("token_endpoint_auth_method", "client_secret_basic")
            return store.add_client(Client(
                client_id=client_info["client_id"],
                client_secret="" if method == "none" else client_info["client_secret"],
                redirect_uris=list(client_metadata.get("redirect_uris", [])),
                scope=client_metadata.get("scope", ""),
                client_name=client_metadata.get("client_name", ""),
                website=client_metadata.get("client_uri", ""),
                # RFC 7591 §2: grant_types defaults to ["authorization_code"], so a client that
                # wants refresh tokens asks for them
                grant_types=list(client_metadata.get("grant_types", ["authorization_code"])),
                response_types=list(client_metadata.get("response_types", ["code"])),
                token_endpoint_auth_method=method))

    server.register_endpoint(Registration)

    require_oauth = ResourceProtector()
    require_oauth.register_token_validator(make_bearer_validator(store))

    base.install_login(app, users, NAME)

    @app.get("/")
    def home() -> Response:
        return base.page(NAME, "<p>An OAuth 2 server for Clarion's tests.</p>")

    @app.get("/.well-known/oauth-authorization-server")
    def oauth_metadata() -> Response:
        if knobs.no_oauth_endpoints:
            return base.json_error(404, error="not_found")
        return Response(json.dumps(metadata()), content_type="application/json")

    @app.get("/.well-known/webfinger")
    def webfinger() -> Response:
        resource = request.args.get("resource", "")
        if not resource:
            return base.json_error(400, error="missing resource")
        user = user_from_resource(resource, users)
        if user is None:
            return base.json_error(404, error="unknown resource")
        b = base_url()
        links: list[dict[str, Any]] = [
            {"rel": PROFILE_REL, "type": "text/html", "href": f"{b}/users/{user.username}"}]
        if not knobs.no_oauth_endpoints:
            links.append({"rel": ISSUER_REL, "href": b})
        return jrd({"subject": f"acct:{user.username}@{request.host}",
                    "aliases": [f"{b}/users/{user.username}"],
                    "links": webfinger_links(links)})

    @app.get("/users/<name>")
    def profile_page(name: str) -> Response:
        user = users.get(name)
        if user is None:
            return base.page("Not found", "<p>No such user.</p>", 404)
        return base.page(user.display_name, f'<p id="handle">{html.escape(user.username)}</p>')

    @app.route("/oauth/authorize", methods=["GET", "POST"])
    def authorize() -> Response:
        return authorize_view(server, store, knobs, users, NAME)

    @app.post("/oauth/token")
    def issue_token() -> Response:
        return server.create_token_response()  # type: ignore[no-any-return]

    @app.post("/oauth/revoke")
    def revoke() -> Response:
        return server.create_endpoint_response("revocation")  # type: ignore[no-any-return]

    @app.post("/oauth/register")
    def register() -> Response:
        if knobs.refuse_registration:
            return base.json_error(403, error="access_denied",
                                   error_description="Client registration is closed")
        return server.create_endpoint_response("client_registration")  # type: ignore[no-any-return]

    @app.route("/userinfo", methods=["GET", "POST"])
    @require_oauth("profile")
    def userinfo() -> Response:
        user = users[current_token.username]
        b = base_url()
        body: dict[str, Any] = {"sub": user.username, "preferred_username": user.username,
                                "name": user.display_name, "profile": f"{b}/users/{user.username}"}
        if "email" in current_token.scope.split() and user.email:
            body["email"] = user.email
            if user.email_verified is not None:
                body["email_verified"] = user.email_verified
        return Response(json.dumps(body), content_type="application/json")

    @app.post("/api/notes")
    @require_oauth("notes")
    def post_note() -> Response:
        data = request.get_json(silent=True) if request.is_json else request.form
        text = (data or {}).get("text", "")
        if not isinstance(text, str) or not text.strip():
            return base.json_error(422, error="invalid_request", error_description="text is empty")
        note_id = uuid.uuid4().hex
        note = {"id": note_id, "url": f"{base_url()}/api/notes/{note_id}", "text": text,
                "author": current_token.username, "published": int(time.time())}
        with store.lock:
            store.notes.append(note)
        return Response(json.dumps(note), 201, content_type="application/json")

    @app.get("/api/notes/<note_id>")
    def get_note(note_id: str) -> Response:
        with store.lock:
            for note in store.notes:
                if note["id"] == note_id:
                    return Response(json.dumps(note), content_type="application/json")
        return base.json_error(404, error="not_found")

    return provider


def authorize_view(server: AuthorizationServer, store: Store, knobs: Knobs,
                   users: dict[str, User], provider_name: str) -> Response:
    """The authorization endpoint: validate the request, then login, consent, and redirect back
    with a code (or error=access_denied)."""
    action, user = base.decision(knobs, users)
    if action == "login":
        return base.login_redirect()
    try:
        grant = server.get_consent_grant(end_user=user)
    except OAuth2Error as error:
        if error.redirect_uri:
            return server.handle_error_response(None, error)  # type: ignore[no-any-return]
        # RFC 6749 §4.1.2.1: a bad client_id or redirect_uri is shown, never redirected to
        return base.page("Authorization error",
                         f'<p id="oauth-error">{html.escape(error.error or "")}: '
                         f'{html.escape(error.description or "")}</p>', 400)
    if action == "ask":
        assert user is not None
        client = grant.client
        return base.consent_page(provider_name, client.client_name or client.client_id, user,
                                 grant.request.payload.scope or "", {}, request.full_path)
    return server.create_authorization_response(  # type: ignore[no-any-return]
        grant_user=user if action == "approve" else None, grant=grant)


@contextmanager
def running_oauth2_provider(users: dict[str, User] | None = None,
                            knobs: Knobs | None = None) -> Iterator[Provider]:
    """Start the generic OAuth 2 provider on 127.0.0.1 (a free port); stop it on exit."""
    with base.running(build(users, knobs)) as provider:
        yield provider
