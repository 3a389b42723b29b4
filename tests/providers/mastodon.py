"""A Mastodon-shaped OAuth 2 provider built with authlib's Flask AuthorizationServer.

What it copies from Mastodon 4.3+ (docs.joinmastodon.org: methods/apps, methods/oauth,
methods/accounts, methods/statuses, spec/webfinger; app/presenters/oauth_metadata_presenter.rb):
``POST /api/v1/apps`` (client_name, redirect_uris as a string or an array, scopes, website →
Application with client_id/client_secret); ``/oauth/authorize`` (PKCE optional, S256 only);
``/oauth/token`` (client_secret_basic or _post; answers access_token, token_type "Bearer", scope,
created_at — no expires_in and no refresh token: Mastodon's tokens do not expire);
``/oauth/revoke``; ``GET /api/v1/accounts/verify_credentials`` (scope read or read:accounts);
``POST /api/v1/statuses`` (scope write or write:statuses); WebFinger for
``acct:alice@host`` (profile-page, self as application/activity+json, the subscribe template);
host-meta; nodeinfo 2.0 naming the software "mastodon"; /api/v1/instance; and
/.well-known/oauth-authorization-server as Mastodon serves it (``app_registration_endpoint`` for
/api/v1/apps, not RFC 7591's ``registration_endpoint``). Errors use Mastodon's ``{"error": …}``.
Mastodon gives no email, so a site requiring a verified one asks the user for it.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import count
from typing import Any
from urllib.parse import urlsplit

from authlib.common.security import generate_token
from authlib.integrations.flask_oauth2 import AuthorizationServer
from flask import Response, request

from . import base
from .base import Knobs, Provider, User
from .oauth2 import authorize_view, jrd
from .oauth2_models import (
    Client,
    S256Optional,
    Store,
    Token,
    make_bearer_validator,
    make_code_grant,
    make_revocation_endpoint,
    make_save_token,
)

NAME = "Example Mastodon"
VERSION = "4.3.0"
# 4.3's scopes (4.4 added "profile" and /oauth/userinfo, not served here)
SCOPES = ["read", "write", "follow", "push", "read:accounts", "read:statuses",
          "write:statuses"]
VAPID_KEY = ("BCk-QqERU0q-CfYZjcuB6lnyyOYfJ2AifKqfeGIm7Z-HiTU5T9eTG5GxVA0_OH5mMlI4UkkDTpa"
             "Zwozy0TzdZ2M=")  # a sample from Mastodon's docs; nothing here uses Web Push
NEVER = 10**9  # Mastodon's tokens do not expire


def base_url() -> str:
    return request.host_url.rstrip("/")


def metadata() -> dict[str, Any]:
    b = base_url()
    return {
        "issuer": f"{b}/",
        "service_documentation": "https://docs.joinmastodon.org/",
        "authorization_endpoint": f"{b}/oauth/authorize",
        "token_endpoint": f"{b}/oauth/token",
        "app_registration_endpoint": f"{b}/api/v1/apps",
        "revocation_endpoint": f"{b}/oauth/revoke",
        "scopes_supported": SCOPES,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query", "fragment", "form_post"],
        "grant_types_supported": ["authorization_code", "password", "client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
    }


def mastodon_error(status: int, message: str) -> Response:
    return base.json_error(status, error=message)


def build(users: dict[str, User] | None = None, knobs: Knobs | None = None) -> Provider:
    users = users if users is not None else base.default_users()
    knobs = knobs or Knobs()
    store = Store(users)
    provider = base.new_provider("mastodon", users, knobs, store, ("/oauth/token",))
    app = provider.app
    account_ids = {name: str(109_000_000_000 + i) for i, name in enumerate(sorted(users))}
    status_ids = count(110_000_000_000_000)

    server = AuthorizationServer(app, query_client=store.query_client,
                                 save_token=make_save_token(store, lambda: NEVER))

    def generate(grant_type: str, client: Client, user: Any = None, scope: str | None = None,
                 expires_in: int | None = None,
                 include_refresh_token: bool = True) -> dict[str, Any]:
        return {"access_token": generate_token(43), "token_type": "Bearer",
                "scope": client.get_allowed_scope(scope or "read") or "read",
                "created_at": int(time.time())}

    server.register_token_generator("default", generate)
    server.register_grant(make_code_grant(store, ["client_secret_basic", "client_secret_post"]),
                          [S256Optional()])
    server.register_endpoint(make_revocation_endpoint(store))
    validator = make_bearer_validator(store)

    def bearer(*scopes: str) -> tuple[Token | None, Response | None]:
        """The request's token if it has one of ``scopes``; else Mastodon's 401/403."""
        auth = request.headers.get("Authorization", "")
        if not auth.lower().startswith("bearer "):
            return None, mastodon_error(401, "The access token is invalid")
        token = validator.authenticate_token(auth[7:].strip())
        if token is None or token.is_expired():
            return None, mastodon_error(401, "The access token is invalid")
        if token.is_revoked():
            return None, mastodon_error(401, "The access token was revoked")
        if not set(token.scope.split()) & set(scopes):
            return None, mastodon_error(403, "This action is outside the authorized scopes")
        return token, None

    def account(user: User) -> dict[str, Any]:
        b = base_url()
        return {
            "id": account_ids[user.username], "username": user.username,
            "acct": user.username, "display_name": user.display_name, "locked": False,
            "bot": False, "discoverable": True, "group": False,
            "created_at": "2024-01-01T00:00:00.000Z", "note": "", "url": f"{b}/@{user.username}",
            "uri": f"{b}/users/{user.username}", "avatar": f"{b}/avatars/original/missing.png",
            "avatar_static": f"{b}/avatars/original/missing.png",
            "header": f"{b}/headers/original/missing.png",
            "header_static": f"{b}/headers/original/missing.png",
            "followers_count": 0, "following_count": 0, "statuses_count": sum(
                1 for n in store.notes if n["account"]["username"] == user.username),
            "last_status_at": None, "emojis": [], "fields": [],
        }

    base.install_login(app, users, NAME)

    @app.get("/")
    def home() -> Response:
        return base.page(NAME, "<p>A Mastodon-shaped server for Clarion's tests.</p>")

    @app.get("/.well-known/oauth-authorization-server")
    def oauth_metadata() -> Response:
        if knobs.no_oauth_endpoints:
            return mastodon_error(404, "Record not found")
        return Response(json.dumps(metadata()), content_type="application/json")

    @app.get("/.well-known/host-meta")
    def host_meta() -> Response:
        b = base_url()
        return Response(
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<XRD xmlns="http://docs.oasis-open.org/ns/xri/xrd-1.0">\n'
            f'  <Link rel="lrdd" template="{html.escape(b)}/.well-known/webfinger'
            '?resource={uri}"/>\n'
            "</XRD>\n", content_type="application/xrd+xml; charset=utf-8")

    @app.get("/.well-known/nodeinfo")
    def nodeinfo_links() -> Response:
        return Response(json.dumps({"links": [{
            "rel": "http://nodeinfo.diaspora.software/ns/schema/2.0",
            "href": f"{base_url()}/nodeinfo/2.0"}]}), content_type="application/json")

    @app.get("/nodeinfo/2.0")
    def nodeinfo() -> Response:
        return Response(json.dumps({
            "version": "2.0", "software": {"name": "mastodon", "version": VERSION},
            "protocols": ["activitypub"], "services": {"outbound": [], "inbound": []},
            "usage": {"users": {"total": len(users)}, "localPosts": len(store.notes)},
            "openRegistrations": False, "metadata": {}}),
            content_type="application/json; profile=\"http://nodeinfo.diaspora.software/ns/schema/2.0#\"")

    @app.get("/api/v1/instance")
    def instance() -> Response:
        return Response(json.dumps({
            "uri": request.host, "title": NAME, "short_description": "", "description": "",
            "email": "admin@example.org", "version": VERSION, "urls": {},
            "registrations": False, "approval_required": False}),
            content_type="application/json")

    @app.get("/.well-known/webfinger")
    def webfinger() -> Response:
        resource = request.args.get("resource", "")
        if not resource:
            return mastodon_error(400, "Missing resource")
        user = None
        if resource.startswith(("http://", "https://")):
            parts = urlsplit(resource)
            if parts.netloc.lower() == request.host.lower():
                path = parts.path
                name = path[2:] if path.startswith("/@") else path.rpartition("/users/")[2]
                user = users.get(name)
        else:
            name, sep, host = resource.removeprefix("acct:").rpartition("@")
            if sep and host.lower() == request.host.lower():
                user = users.get(name)
        if user is None:
            return Response(status=404)
        b = base_url()
        return jrd({
            "subject": f"acct:{user.username}@{request.host}",
            "aliases": [f"{b}/@{user.username}", f"{b}/users/{user.username}"],
            "links": [
                {"rel": "http://webfinger.net/rel/profile-page", "type": "text/html",
                 "href": f"{b}/@{user.username}"},
                {"rel": "self", "type": "application/activity+json",
                 "href": f"{b}/users/{user.username}"},
                {"rel": "http://ostatus.org/schema/1.0/subscribe",
                 "template": f"{b}/authorize_interaction?uri={{uri}}"},
            ]})

    @app.get("/@<name>")
    def profile_page(name: str) -> Response:
        user = users.get(name)
        if user is None:
            return base.page("Not found", "<p>No such user.</p>", 404)
        return base.page(user.display_name, f'<p id="handle">@{html.escape(user.username)}</p>')

    @app.post("/api/v1/apps")
    def create_app() -> Response:
        if knobs.refuse_registration:
            return mastodon_error(403, "This action is not allowed")
        params: dict[str, Any]
        if request.is_json:
            params = request.get_json(silent=True) or {}
        else:
            params = {k: (v if len(v) > 1 else v[0]) for k, v in request.form.lists()}
        name = params.get("client_name")
        if not name:
            return mastodon_error(422, "Validation failed: Application name can't be blank")
        uris = params.get("redirect_uris") or ""
        uri_list = uris.split() if isinstance(uris, str) else [str(u) for u in uris]
        if not uri_list:
            return mastodon_error(422, "Validation failed: Redirect URI can't be blank")
        for uri in uri_list:
            if uri != "urn:ietf:wg:oauth:2.0:oob" and not urlsplit(uri).scheme:
                return mastodon_error(
                    422, "Validation failed: Redirect URI must be an absolute URI.")
        scopes = str(params.get("scopes") or "read").split()
        unknown = [s for s in scopes if s not in SCOPES]
        if unknown:
            return mastodon_error(422, f"Validation failed: Scopes {' '.join(unknown)} are invalid")
        client = store.add_client(Client(
            client_id=generate_token(43), client_secret=generate_token(43),
            redirect_uris=uri_list, scope=" ".join(scopes), client_name=str(name),
            website=str(params.get("website") or ""), grant_types=["authorization_code"],
            lenient_auth=True))
        return Response(json.dumps({
            "id": str(len(store.clients)), "name": client.client_name,
            "website": client.website or None, "scopes": scopes,
            "redirect_uri": "\n".join(uri_list), "redirect_uris": uri_list,
            "vapid_key": VAPID_KEY,
            "client_id": client.client_id, "client_secret": client.client_secret,
            "client_secret_expires_at": 0}), content_type="application/json")

    @app.route("/oauth/authorize", methods=["GET", "POST"])
    def authorize() -> Response:
        return authorize_view(server, store, knobs, users, NAME)

    @app.post("/oauth/token")
    def issue_token() -> Response:
        return server.create_token_response()  # type: ignore[no-any-return]

    @app.post("/oauth/revoke")
    def revoke() -> Response:
        return server.create_endpoint_response("revocation")  # type: ignore[no-any-return]

    @app.get("/api/v1/accounts/verify_credentials")
    def verify_credentials() -> Response:
        token, error = bearer("read", "read:accounts")
        if error is not None:
            return error
        assert token is not None
        user = users[token.username]
        body = account(user)
        body["source"] = {"privacy": "public", "sensitive": False, "language": "",
                          "note": "", "fields": [], "follow_requests_count": 0}
        return Response(json.dumps(body), content_type="application/json")

    @app.post("/api/v1/statuses")
    def post_status() -> Response:
        token, error = bearer("write", "write:statuses")
        if error is not None:
            return error
        assert token is not None
        params = (request.get_json(silent=True) or {}) if request.is_json else request.form
        text = params.get("status", "")
        if not isinstance(text, str) or not text.strip():
            return mastodon_error(422, "Validation failed: Text can't be blank")
        user = users[token.username]
        b = base_url()
        sid = str(next(status_ids))
        status = {
            "id": sid, "created_at": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            "in_reply_to_id": None, "in_reply_to_account_id": None, "sensitive": False,
            "spoiler_text": "", "visibility": params.get("visibility", "public"),
            "language": "en", "uri": f"{b}/users/{user.username}/statuses/{sid}",
            "url": f"{b}/@{user.username}/{sid}", "replies_count": 0, "reblogs_count": 0,
            "favourites_count": 0, "content": f"<p>{html.escape(text)}</p>",
            "reblog": None, "application": None, "account": account(user),
            "media_attachments": [], "mentions": [], "tags": [], "emojis": [], "card": None,
            "poll": None,
        }
        with store.lock:
            store.notes.append(status)
        return Response(json.dumps(status), content_type="application/json")

    @app.get("/api/v1/statuses/<sid>")
    def get_status(sid: str) -> Response:
        with store.lock:
            for status in store.notes:
                if status["id"] == sid:
                    return Response(json.dumps(status), content_type="application/json")
        return mastodon_error(404, "Record not found")

    return provider


@contextmanager
def running_mastodon_provider(users: dict[str, User] | None = None,
                              knobs: Knobs | None = None) -> Iterator[Provider]:
    """Start the Mastodon-shaped provider on 127.0.0.1 (a free port); stop it on exit."""
    with base.running(build(users, knobs)) as provider:
        yield provider
