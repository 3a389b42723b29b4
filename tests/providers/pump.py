"""A pump.io-shaped OAuth 1.0a provider built with authlib's Flask OAuth 1 server.

What it copies from pump.io 5.1.4 (routes/webfinger.js, routes/clientreg.js, routes/oauth.js,
API.md): host-meta as XRD (or JRD with ``Accept: application/json``) and host-meta.json with the
lrdd templates, ``registration_endpoint`` and the ``http://apinamespace.org/oauth/...`` links;
WebFinger and /api/lrdd answering a user's links only (``{"links": [...]}``, no subject, no
OAuth links: those are on host-meta); ``POST /api/client/register`` with ``type=client_associate``
and space-separated ``redirect_uris``, answering ``client_id``, ``client_secret`` and
``expires_at: 0``; ``/oauth/request_token``, ``/oauth/authorize`` (login, then approve/deny; the
callback gets ``oauth_token`` and ``oauth_verifier``), ``/oauth/access_token``; ``GET /api/whoami``
redirecting (302) to ``/api/user/<nick>/profile``; ``POST /api/user/<nick>/feed`` taking an
Activity Streams 1.0 activity and answering it with ids.

Like pump.io, reading a profile needs a signed request (two-legged: client credentials only is
enough), so a client that follows whoami's redirect must sign the second request too; a
redirect does not carry a valid OAuth 1 signature (it was made for another URL and its nonce is
spent). The user denying sends ``error=access_denied`` to the callback (authlib's behaviour; what
pump.io does was not checked).
"""

from __future__ import annotations

import html
import json
import secrets
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from authlib.integrations.flask_oauth1 import (
    AuthorizationServer,
    ResourceProtector,
    current_credential,
)
from authlib.oauth1 import ClientMixin, OAuth1Request, TemporaryCredential, TokenCredentialMixin
from authlib.oauth1.errors import InvalidClientError, MissingRequiredParameterError, OAuth1Error
from flask import Response, redirect, request

from . import base
from .base import Knobs, Provider, User

NAME = "Example pump.io"
AS_PUBLIC = "http://activityschema.org/collection/public"
TEMPORARY_LIFETIME = 600
OAUTH_NS = "http://apinamespace.org/oauth"


@dataclass
class PumpClient(ClientMixin):  # type: ignore[misc]
    client_id: str
    client_secret: str
    redirect_uris: list[str]
    application_name: str = ""
    application_type: str = "native"
    contacts: list[str] = field(default_factory=list)
    logo_url: str = ""
    revoked: bool = False

    def get_default_redirect_uri(self) -> str:
        return self.redirect_uris[0] if self.redirect_uris else ""

    def get_client_secret(self) -> str:
        return self.client_secret

    def get_rsa_public_key(self) -> None:
        return None


@dataclass
class AccessToken(TokenCredentialMixin):  # type: ignore[misc]
    oauth_token: str
    oauth_token_secret: str
    client_id: str
    username: str
    revoked: bool = False

    def get_oauth_token(self) -> str:
        return self.oauth_token

    def get_oauth_token_secret(self) -> str:
        return self.oauth_token_secret

    def get_user_id(self) -> str:
        return self.username


@dataclass
class PumpStore:
    users: dict[str, User]
    clients: dict[str, PumpClient] = field(default_factory=dict)
    temporary: dict[str, tuple[float, TemporaryCredential]] = field(default_factory=dict)
    tokens: dict[str, AccessToken] = field(default_factory=dict)
    nonces: set[str] = field(default_factory=set)
    activities: list[dict[str, Any]] = field(default_factory=list)
    lock: Any = field(default_factory=lambda: __import__("threading").RLock())

    def query_client(self, client_id: str) -> PumpClient | None:
        with self.lock:
            client = self.clients.get(client_id)
        return None if client is None or client.revoked else client

    def exists_nonce(self, nonce: str, timestamp: Any, client_id: str, token: str | None) -> bool:
        key = f"{nonce}-{timestamp}-{client_id}-{token or ''}"
        with self.lock:
            if key in self.nonces:
                return True
            self.nonces.add(key)
        return False

    def query_token(self, client_id: str, oauth_token: str) -> AccessToken | None:
        with self.lock:
            token = self.tokens.get(oauth_token)
        if token is None or token.client_id != client_id or token.revoked:
            return None
        if self.query_client(client_id) is None:
            return None
        return token

    # -- what tests call ---------------------------------------------------------------------

    def revoke_tokens(self, username: str | None = None) -> int:
        n = 0
        with self.lock:
            for token in self.tokens.values():
                if username is None or token.username == username:
                    token.revoked = True
                    n += 1
        return n

    def revoke_client(self, client_id: str | None = None) -> int:
        n = 0
        with self.lock:
            for client in self.clients.values():
                if client_id is None or client.client_id == client_id:
                    client.revoked = True
                    n += 1
        return n


def base_url() -> str:
    return request.host_url.rstrip("/")


def host_meta_links(knobs: Knobs) -> list[dict[str, str]]:
    b = base_url()
    links = [
        {"rel": "lrdd", "type": "application/xrd+xml",
         "template": f"{b}/api/lrdd?resource={{uri}}"},
        {"rel": "lrdd", "type": "application/json",
         "template": f"{b}/.well-known/webfinger?resource={{uri}}"},
    ]
    if not knobs.no_oauth_endpoints:
        links += [
            {"rel": "registration_endpoint", "href": f"{b}/api/client/register"},
            {"rel": f"{OAUTH_NS}/request_token", "href": f"{b}/oauth/request_token"},
            {"rel": f"{OAUTH_NS}/authorize", "href": f"{b}/oauth/authorize"},
            {"rel": f"{OAUTH_NS}/access_token", "href": f"{b}/oauth/access_token"},
        ]
    links += [
        {"rel": "dialback", "href": f"{b}/api/dialback"},
        {"rel": "http://apinamespace.org/activitypub/whoami", "href": f"{b}/api/whoami"},
    ]
    return links


def xrd(links: list[dict[str, str]]) -> Response:
    body = "<?xml version='1.0' encoding='UTF-8'?>\n" \
           "<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>\n"
    for link in links:
        attrs = " ".join(f'{k}="{html.escape(v, quote=True)}"' for k, v in link.items())
        body += f"<Link {attrs} />\n"
    return Response(body + "</XRD>\n", content_type="application/xrd+xml")


def wants_json() -> bool:
    """pump.io answers JRD when the request accepts application/json at all."""
    return "application/json" in request.headers.get("Accept", "") or \
        "application/jrd+json" in request.headers.get("Accept", "")


def profile(user: User) -> dict[str, Any]:
    b = base_url()
    host = request.host
    return {
        "objectType": "person",
        "id": f"acct:{user.username}@{host}",
        "preferredUsername": user.username,
        "displayName": user.display_name,
        "url": f"{b}/{user.username}",
        "links": {
            "self": {"href": f"{b}/api/user/{user.username}/profile"},
            "activity-inbox": {"href": f"{b}/api/user/{user.username}/inbox"},
            "activity-outbox": {"href": f"{b}/api/user/{user.username}/feed"},
        },
        "followers": {"url": f"{b}/api/user/{user.username}/followers"},
        "following": {"url": f"{b}/api/user/{user.username}/following"},
        "favorites": {"url": f"{b}/api/user/{user.username}/favorites"},
        "lists": {"url": f"{b}/api/user/{user.username}/lists/person"},
    }


def user_links(user: User) -> list[dict[str, str]]:
    b = base_url()
    prof = profile(user)
    links = [{"rel": "http://webfinger.net/rel/profile-page", "type": "text/html",
              "href": f"{b}/{user.username}"},
             {"rel": "dialback", "href": f"{b}/api/dialback"}]
    links += [{"rel": rel, **value} for rel, value in prof["links"].items()]
    links += [{"rel": feed, "href": prof[feed]["url"]}
              for feed in ("followers", "following", "favorites", "lists")]
    return links


def lrdd_user(users: dict[str, User]) -> tuple[User | None, Response | None]:
    resource = request.args.get("resource")
    if not resource:
        return None, base.json_error(400, error="No resource parameter")
    # pump.io prefixes a bare nick@host (its test for "bare" is "no colon", which a host:port
    # as ours would fail)
    if not resource.startswith(("acct:", "http:", "https:")) and "@" in resource:
        resource = "acct:" + resource
    if resource.startswith("acct:"):
        nick, _, host = resource[len("acct:"):].rpartition("@")
    else:
        parts = urlsplit(resource)
        host, nick = parts.netloc, parts.path.strip("/").split("/")[-1]
        if not parts.path.startswith("/api/user/") and parts.path.count("/") != 1:
            return None, base.json_error(404, error="Unknown object type")
    if host.lower() != request.host.lower():
        return None, base.json_error(404, error="Unrecognized host")
    user = users.get(nick)
    if user is None:
        return None, base.json_error(404, error=f"There is no user named {nick!r}")
    return user, None


def build(users: dict[str, User] | None = None, knobs: Knobs | None = None) -> Provider:
    users = users if users is not None else base.default_users()
    knobs = knobs or Knobs()
    store = PumpStore(users)
    provider = base.new_provider("pump", users, knobs, store,
                                 ("/oauth/request_token", "/oauth/access_token"))
    app = provider.app

    server = AuthorizationServer(app, query_client=store.query_client)
    server.register_hook("exists_nonce", store.exists_nonce)

    def create_temporary_credential(token: dict[str, Any], client_id: str,
                                    redirect_uri: str) -> TemporaryCredential:
        cred = TemporaryCredential(token)
        cred["client_id"] = client_id
        cred["oauth_callback"] = redirect_uri
        with store.lock:
            store.temporary[token["oauth_token"]] = (time.time(), cred)
        return cred

    def get_temporary_credential(oauth_token: str) -> TemporaryCredential | None:
        with store.lock:
            item = store.temporary.get(oauth_token or "")
        if item is None or time.time() - item[0] > TEMPORARY_LIFETIME:
            return None
        return item[1]

    def delete_temporary_credential(oauth_token: str) -> None:
        with store.lock:
            store.temporary.pop(oauth_token or "", None)

    def create_authorization_verifier(credential: TemporaryCredential, grant_user: User,
                                      verifier: str) -> None:
        with store.lock:
            credential["oauth_verifier"] = verifier
            credential["user_id"] = grant_user.username

    def create_token_credential(token: dict[str, Any],
                                temporary: TemporaryCredential) -> AccessToken:
        cred = AccessToken(token["oauth_token"], token["oauth_token_secret"],
                           temporary.get_client_id(), temporary.get_user_id())
        with store.lock:
            store.tokens[cred.oauth_token] = cred
        return cred

    server.register_hook("create_temporary_credential", create_temporary_credential)
    server.register_hook("get_temporary_credential", get_temporary_credential)
    server.register_hook("delete_temporary_credential", delete_temporary_credential)
    server.register_hook("create_authorization_verifier", create_authorization_verifier)
    server.register_hook("create_token_credential", create_token_credential)

    protector = ResourceProtector(app, query_client=store.query_client,
                                  query_token=store.query_token, exists_nonce=store.exists_nonce)

    def client_auth() -> Response | None:
        """Two-legged OAuth (a signed request from a registered client, a token optional),
        which pump.io requires for reading profiles and feeds."""
        try:
            req = OAuth1Request(request.method, request.url, request.form.to_dict(flat=True),
                                request.headers)
            if req.token:
                protector.validate_request(request.method, request.url,
                                           request.form.to_dict(flat=True), request.headers)
                return None
            if not req.client_id:
                raise MissingRequiredParameterError("oauth_consumer_key")
            req.client = store.query_client(req.client_id)
            if req.client is None:
                raise InvalidClientError()
            protector.validate_timestamp_and_nonce(req)
            protector.validate_oauth_signature(req)
        except OAuth1Error as error:
            return Response(json.dumps(dict(error.get_body())), error.status_code,
                            content_type="application/json")
        return None

    base.install_login(app, users, NAME)

    @app.get("/")
    def home() -> Response:
        return base.page(NAME, "<p>A pump.io-shaped server for Clarion's tests.</p>")

    @app.get("/.well-known/host-meta")
    def host_meta() -> Response:
        if wants_json():
            return host_meta_json()
        return xrd(host_meta_links(knobs))

    @app.get("/.well-known/host-meta.json")
    def host_meta_json() -> Response:
        return Response(json.dumps({"links": host_meta_links(knobs)}),
                        content_type="application/json")

    @app.get("/.well-known/webfinger")
    def webfinger() -> Response:
        user, error = lrdd_user(users)
        if error is not None:
            return error
        assert user is not None
        return Response(json.dumps({"links": user_links(user)}), content_type="application/json")

    @app.get("/api/lrdd")
    def lrdd() -> Response:
        user, error = lrdd_user(users)
        if error is not None:
            return error
        assert user is not None
        if wants_json():
            return Response(json.dumps({"links": user_links(user)}),
                            content_type="application/json")
        return xrd(user_links(user))

    @app.get("/<nick>")
    def profile_page(nick: str) -> Response:
        user = users.get(nick)
        if user is None:
            return base.page("Not found", "<p>No such user.</p>", 404)
        return base.page(user.display_name, f'<p id="handle">{html.escape(user.username)}</p>')

    @app.post("/api/client/register")
    def client_register() -> Response:
        if knobs.refuse_registration:
            return base.json_error(403, error="Client registration is closed on this server")
        params: dict[str, Any] = (request.get_json(silent=True) or {}) if request.is_json \
            else request.form.to_dict(flat=True)
        kind = params.get("type")
        if kind not in ("client_associate", "client_update"):
            return base.json_error(400, error="Unrecognized type: " + str(kind))
        if "access_token" in params:
            return base.json_error(400, error="access_token not needed for registration")
        app_type = params.get("application_type", "native")
        if app_type not in ("web", "native"):
            return base.json_error(400, error="Unknown application_type.")
        uris = str(params.get("redirect_uris", "")).split()
        for uri in uris:
            parts = urlsplit(uri)
            if parts.scheme not in ("http", "https") or not parts.netloc or \
                    "http://" in uri[8:] or "https://" in uri[8:]:
                return base.json_error(400, error="redirect_uris must be space-separated URLs.")
        if kind == "client_update":
            client = store.clients.get(str(params.get("client_id", "")))
            if client is None or not secrets.compare_digest(
                    client.client_secret, str(params.get("client_secret", ""))):
                return base.json_error(403, error="Unauthorized")
        else:
            if "client_id" in params or "client_secret" in params:
                return base.json_error(400, error="Only set client_id for update.")
            client = PumpClient(secrets.token_urlsafe(16), secrets.token_urlsafe(32), [])
        client.redirect_uris = uris or client.redirect_uris
        client.application_name = str(params.get("application_name", client.application_name))
        client.application_type = app_type
        client.contacts = str(params.get("contacts", "")).split()
        client.logo_url = str(params.get("logo_url", ""))
        with store.lock:
            store.clients[client.client_id] = client
        # pump.io always answers expires_at 0 (never)
        return Response(json.dumps({"client_id": client.client_id,
                                    "client_secret": client.client_secret, "expires_at": 0}),
                        content_type="application/json")

    @app.post("/oauth/request_token")
    def request_token() -> Response:
        return server.create_temporary_credentials_response()  # type: ignore[no-any-return]

    @app.route("/oauth/authorize", methods=["GET", "POST"])
    def authorize() -> Response:
        try:
            req = server.check_authorization_request()
        except OAuth1Error as error:
            return base.page("Authorization error",
                             f'<p id="oauth-error">{html.escape(error.error)}: '
                             f'{html.escape(error.description or "")}</p>', 400)
        action, user = base.decision(knobs, users)
        if action == "login":
            return base.login_redirect()
        if action == "ask":
            assert user is not None
            client = store.query_client(req.credential.get_client_id())
            name = client.application_name if client and client.application_name else "A client"
            return base.consent_page(NAME, name, user, "", {}, request.full_path)
        return server.create_authorization_response(  # type: ignore[no-any-return]
            grant_user=user if action == "approve" else None)

    @app.post("/oauth/access_token")
    def access_token() -> Response:
        return server.create_token_response()  # type: ignore[no-any-return]

    @app.get("/api/whoami")
    @protector()
    def whoami() -> Response:
        username = current_credential.username
        return redirect(f"{base_url()}/api/user/{username}/profile")  # type: ignore[return-value]

    @app.get("/api/user/<nick>/profile")
    def user_profile(nick: str) -> Response:
        denied = client_auth()
        if denied is not None:
            return denied
        user = users.get(nick)
        if user is None:
            return base.json_error(404, error=f"No such user {nick!r}")
        return Response(json.dumps(profile(user)), content_type="application/json")

    @app.post("/api/user/<nick>/feed")
    @protector()
    def post_activity(nick: str) -> Response:
        if current_credential.username != nick:
            return base.json_error(401, error="Only the user can post to their own feed")
        activity = request.get_json(silent=True)
        if not isinstance(activity, dict) or not isinstance(activity.get("verb", "post"), str):
            return base.json_error(400, error="Activity must be a JSON object")
        obj = activity.get("object")
        if not isinstance(obj, dict) or not obj.get("objectType"):
            return base.json_error(400, error="Activity needs an object with an objectType")
        b = base_url()
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        object_type = str(obj["objectType"])
        obj_uuid = uuid.uuid4().hex
        obj = {**obj, "id": f"{b}/api/{object_type}/{obj_uuid}",
               "url": f"{b}/{nick}/{object_type}/{obj_uuid}", "published": now, "updated": now,
               "author": {"objectType": "person", "id": f"acct:{nick}@{request.host}"},
               "links": {"self": {"href": f"{b}/api/{object_type}/{obj_uuid}"}}}
        act_uuid = uuid.uuid4().hex
        result = {**activity, "verb": activity.get("verb", "post"), "object": obj,
                  "id": f"{b}/api/activity/{act_uuid}", "url": f"{b}/{nick}/activity/{act_uuid}",
                  "actor": profile(users[nick]), "published": now, "updated": now,
                  "to": activity.get("to", [{"objectType": "collection", "id": AS_PUBLIC}]),
                  "links": {"self": {"href": f"{b}/api/activity/{act_uuid}"}}}
        with store.lock:
            store.activities.append(result)
        return Response(json.dumps(result), content_type="application/json")

    @app.get("/api/user/<nick>/feed")
    def read_feed(nick: str) -> Response:
        denied = client_auth()
        if denied is not None:
            return denied
        with store.lock:
            items = [a for a in store.activities
                     if a["actor"]["preferredUsername"] == nick][::-1]
        return Response(json.dumps({"displayName": f"Activities by {nick}",
                                    "totalItems": len(items), "items": items[:20]}),
                        content_type="application/json")

    return provider


@contextmanager
def running_pump_provider(users: dict[str, User] | None = None,
                          knobs: Knobs | None = None) -> Iterator[Provider]:
    """Start the pump.io-shaped provider on 127.0.0.1 (a free port); stop it on exit."""
    with base.running(build(users, knobs)) as provider:
        yield provider
