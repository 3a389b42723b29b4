"""Self-test of the test providers (tests/providers/) with authlib's own *clients* and plain
httpx, so that a provider bug is never blamed on Clarion: discovery documents, registration,
authorize (auto-approve and the login + consent pages), token, refresh, whoami/userinfo, posting,
and every knob of issue 13 §4."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlsplit

import defusedxml.ElementTree as DET
import httpx
import pytest
from authlib.integrations.httpx_client import OAuth1Client, OAuth2Client
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata

from providers.base import Knobs, Provider
from providers.mastodon import running_mastodon_provider
from providers.oauth2 import ISSUER_REL, running_oauth2_provider
from providers.pump import running_pump_provider

CALLBACK = "http://127.0.0.1:9/callback"  # never dialled: the tests read the redirect
XRD_NS = "{http://docs.oasis-open.org/ns/xri/xrd-1.0}"


@pytest.fixture
def oauth2() -> Iterator[Provider]:
    with running_oauth2_provider(knobs=Knobs(auto_approve="alice")) as p:
        yield p


@pytest.fixture
def pump() -> Iterator[Provider]:
    with running_pump_provider(knobs=Knobs(auto_approve="alice")) as p:
        yield p


@pytest.fixture
def mastodon() -> Iterator[Provider]:
    with running_mastodon_provider(knobs=Knobs(auto_approve="alice")) as p:
        yield p


def query(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


class _Forms(HTMLParser):
    """The hidden inputs and the action of the page's forms (enough for the login and consent
    pages, which a browser would submit)."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: dict[str, dict[str, Any]] = {}
        self._current: dict[str, Any] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form":
            self._current = {"action": a.get("action"), "fields": {}}
            self.forms[a.get("id") or ""] = self._current
        elif tag == "input" and self._current is not None and a.get("type") == "hidden":
            self._current["fields"][a.get("name")] = a.get("value") or ""


def forms(html: str) -> dict[str, dict[str, Any]]:
    parser = _Forms()
    parser.feed(html)
    return parser.forms


def authorize_as_user(provider: Provider, url: str, username: str, password: str,
                      approve: bool = True) -> str:
    """What a person does in a browser: open the authorize URL, log in, approve or deny.
    Returns the Location the provider sends the browser to (the client's callback)."""
    with httpx.Client(base_url=provider.url) as browser:
        r = browser.get(url)
        assert r.status_code == 302 and r.headers["location"].startswith("/login?"), r.text
        login_page = browser.get(r.headers["location"])
        assert login_page.status_code == 200 and 'id="login-form"' in login_page.text
        login = forms(login_page.text)["login-form"]
        r = browser.post(login["action"], data={**login["fields"], "username": username,
                                                "password": password})
        assert r.status_code == 302, r.text
        consent_page = browser.get(r.headers["location"])
        assert consent_page.status_code == 200, consent_page.text
        assert f'<b id="who">{username}</b>' in consent_page.text
        consent = forms(consent_page.text)["consent-form"]
        r = browser.post(consent["action"], data={**consent["fields"],
                                                  "confirm": "yes" if approve else "no"})
        assert r.status_code == 302, r.text
        return str(r.headers["location"])


# ---------------------------------------------------------------------------------------------
# the generic OAuth 2 provider
# ---------------------------------------------------------------------------------------------

def register_oauth2(p: Provider, **extra: Any) -> dict[str, Any]:
    body = {"redirect_uris": [CALLBACK], "client_name": "Self-test",
            "grant_types": ["authorization_code", "refresh_token"],
            "scope": "profile email notes", **extra}
    r = httpx.post(f"{p.url}/oauth/register", json=body)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def oauth2_client(p: Provider, reg: dict[str, Any], **kwargs: Any) -> OAuth2Client:
    return OAuth2Client(reg["client_id"], reg["client_secret"], scope="profile email notes",
                        redirect_uri=CALLBACK, code_challenge_method="S256", **kwargs)


def oauth2_tokens(p: Provider, client: OAuth2Client,
                  username: str | None = None) -> dict[str, Any]:
    verifier = secrets.token_urlsafe(48)
    url, state = client.create_authorization_url(f"{p.url}/oauth/authorize",
                                                 code_verifier=verifier)
    if username is None:
        r = httpx.get(url)
        assert r.status_code == 302, r.text
        location = r.headers["location"]
    else:
        location = authorize_as_user(p, url, username, f"{username}-password")
    assert query(location)["state"] == state
    return client.fetch_token(f"{p.url}/oauth/token",  # type: ignore[no-any-return]
                              authorization_response=location, code_verifier=verifier)


def test_oauth2_discovery_documents(oauth2: Provider) -> None:
    md = httpx.get(f"{oauth2.url}/.well-known/oauth-authorization-server").json()
    AuthorizationServerMetadata(md).validate()  # authlib's RFC 8414 checks
    assert md["issuer"] == oauth2.url
    assert md["code_challenge_methods_supported"] == ["S256"]
    assert md["registration_endpoint"] == f"{oauth2.url}/oauth/register"

    r = httpx.get(f"{oauth2.url}/.well-known/webfinger",
                  params={"resource": f"acct:{oauth2.acct('alice')}"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/jrd+json"
    jrd = r.json()
    assert jrd["subject"] == f"acct:{oauth2.acct('alice')}"
    assert {"rel": ISSUER_REL, "href": oauth2.url} in jrd["links"]
    only = httpx.get(f"{oauth2.url}/.well-known/webfinger",
                     params={"resource": f"acct:{oauth2.acct('alice')}", "rel": ISSUER_REL})
    assert [link["rel"] for link in only.json()["links"]] == [ISSUER_REL]
    # the profile URL is a resource too
    by_url = httpx.get(f"{oauth2.url}/.well-known/webfinger",
                       params={"resource": f"{oauth2.url}/users/bob"})
    assert by_url.json()["subject"] == f"acct:{oauth2.acct('bob')}"

    assert httpx.get(f"{oauth2.url}/.well-known/webfinger",
                     params={"resource": f"acct:nobody@{oauth2.host}"}).status_code == 404
    assert httpx.get(f"{oauth2.url}/.well-known/webfinger",
                     params={"resource": "acct:alice@elsewhere.example"}).status_code == 404
    assert httpx.get(f"{oauth2.url}/.well-known/webfinger").status_code == 400


def test_oauth2_full_flow_with_refresh_and_revocation(oauth2: Provider) -> None:
    reg = register_oauth2(oauth2)
    assert reg["client_secret_expires_at"] == 0
    updates: list[dict[str, Any]] = []
    client = oauth2_client(oauth2, reg, token_endpoint=f"{oauth2.url}/oauth/token",
                           update_token=lambda token, **kw: updates.append(token))
    token = oauth2_tokens(oauth2, client)
    assert token["token_type"] == "Bearer" and token["refresh_token"]
    assert token["scope"] == "profile email notes"

    me = client.get(f"{oauth2.url}/userinfo").json()
    assert me == {"sub": "alice", "preferred_username": "alice", "name": "Alice Liddell",
                  "profile": f"{oauth2.url}/users/alice", "email": "alice@example.org",
                  "email_verified": True}
    note = client.post(f"{oauth2.url}/api/notes", json={"text": "hello"})
    assert note.status_code == 201
    assert httpx.get(note.json()["url"]).json()["text"] == "hello"

    # an access token that expires inside authlib's leeway (60 s) is refreshed by the client
    # itself before its next request: no waiting
    oauth2.knobs.access_token_ttl = 30
    first = client.refresh_token(f"{oauth2.url}/oauth/token")
    assert first["expires_in"] == 30
    updates.clear()
    assert client.get(f"{oauth2.url}/userinfo").status_code == 200
    assert [u["access_token"] for u in updates] == [client.token["access_token"]]
    assert client.token["access_token"] != first["access_token"]
    refreshed = client.token["access_token"]
    # an access token expired on the server's side only is a 401 (the client cannot know)
    oauth2.state.expire_tokens()
    r = httpx.get(f"{oauth2.url}/userinfo", headers={"Authorization": f"Bearer {refreshed}"})
    assert r.status_code == 401
    # refresh tokens rotate: the first one no longer works
    old = OAuth2Client(reg["client_id"], reg["client_secret"])
    with pytest.raises(Exception, match="invalid_grant"):
        old.refresh_token(f"{oauth2.url}/oauth/token", refresh_token=token["refresh_token"])

    # RFC 7009 revocation by the client
    current = client.token["access_token"]
    r = httpx.post(f"{oauth2.url}/oauth/revoke", data={"token": current},
                   auth=(reg["client_id"], reg["client_secret"]))
    assert r.status_code == 200
    r = httpx.get(f"{oauth2.url}/userinfo", headers={"Authorization": f"Bearer {current}"})
    assert r.status_code == 401 and r.json()["error"] == "invalid_token"


def test_oauth2_email_claims_per_user(oauth2: Provider) -> None:
    reg = register_oauth2(oauth2)
    seen = {}
    for user in ("alice", "bob", "carol"):
        oauth2.knobs.auto_approve = user
        client = oauth2_client(oauth2, reg)
        oauth2_tokens(oauth2, client)
        seen[user] = client.get(f"{oauth2.url}/userinfo").json()
    assert seen["alice"]["email_verified"] is True
    assert seen["bob"]["email"] == "bob@example.org" and seen["bob"]["email_verified"] is False
    assert "email" not in seen["carol"] and "email_verified" not in seen["carol"]
    # without the email scope there is no email at all
    client = OAuth2Client(reg["client_id"], reg["client_secret"], scope="profile",
                          redirect_uri=CALLBACK, code_challenge_method="S256")
    oauth2.knobs.auto_approve = "alice"
    oauth2_tokens(oauth2, client)
    assert "email" not in client.get(f"{oauth2.url}/userinfo").json()
    # and without "notes" no posting
    assert client.post(f"{oauth2.url}/api/notes", json={"text": "x"}).status_code == 403


def test_oauth2_login_and_consent_pages(oauth2: Provider) -> None:
    oauth2.knobs.auto_approve = None
    reg = register_oauth2(oauth2, client_name="Clarion test site")
    client = oauth2_client(oauth2, reg)
    token = oauth2_tokens(oauth2, client, username="bob")
    assert client.get(f"{oauth2.url}/userinfo").json()["sub"] == "bob"
    assert token["access_token"]

    url, state = client.create_authorization_url(f"{oauth2.url}/oauth/authorize",
                                                 code_verifier=secrets.token_urlsafe(48))
    denied = query(authorize_as_user(oauth2, url, "alice", "alice-password", approve=False))
    assert denied["error"] == "access_denied" and denied["state"] == state

    with httpx.Client(base_url=oauth2.url) as browser:
        r = browser.post("/login", data={"username": "alice", "password": "wrong", "next": "/"})
        assert r.status_code == 401 and 'id="login-error"' in r.text


def test_oauth2_pkce_is_required_with_s256(oauth2: Provider) -> None:
    reg = register_oauth2(oauth2)
    base_params = {"response_type": "code", "client_id": reg["client_id"],
                   "redirect_uri": CALLBACK, "scope": "profile", "state": "s1"}
    r = httpx.get(f"{oauth2.url}/oauth/authorize", params=base_params)
    assert r.status_code == 302
    assert query(r.headers["location"])["error"] == "invalid_request"
    assert query(r.headers["location"])["state"] == "s1"
    plain = {**base_params, "code_challenge": "a" * 43, "code_challenge_method": "plain"}
    r = httpx.get(f"{oauth2.url}/oauth/authorize", params=plain)
    assert query(r.headers["location"])["error"] == "invalid_request"

    # a wrong verifier, then a code used twice
    client = oauth2_client(oauth2, reg)
    verifier = secrets.token_urlsafe(48)
    url, _ = client.create_authorization_url(f"{oauth2.url}/oauth/authorize",
                                             code_verifier=verifier)
    code = query(httpx.get(url).headers["location"])["code"]
    token_url = f"{oauth2.url}/oauth/token"
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK}
    auth = (reg["client_id"], reg["client_secret"])
    r = httpx.post(token_url, data={**form, "code_verifier": secrets.token_urlsafe(48)},
                   auth=auth)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    r = httpx.post(token_url, data={**form, "code_verifier": verifier}, auth=auth)
    assert r.status_code == 200, r.text
    r = httpx.post(token_url, data={**form, "code_verifier": verifier}, auth=auth)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_oauth2_bad_client_shows_a_page_not_a_redirect(oauth2: Provider) -> None:
    r = httpx.get(f"{oauth2.url}/oauth/authorize",
                  params={"response_type": "code", "client_id": "nope", "redirect_uri": CALLBACK})
    assert r.status_code == 400 and 'id="oauth-error"' in r.text
    reg = register_oauth2(oauth2)
    r = httpx.get(f"{oauth2.url}/oauth/authorize",
                  params={"response_type": "code", "client_id": reg["client_id"],
                          "redirect_uri": "http://evil.example/cb"})
    assert r.status_code == 400 and "location" not in r.headers


def test_oauth2_registration_without_refresh_grant_gets_no_refresh_token(
        oauth2: Provider) -> None:
    reg = register_oauth2(oauth2, grant_types=["authorization_code"])
    token = oauth2_tokens(oauth2, oauth2_client(oauth2, reg))
    assert "refresh_token" not in token
    r = httpx.post(f"{oauth2.url}/oauth/register", json={"redirect_uris": ["not a url"]})
    assert r.status_code == 400 and r.json()["error"] == "invalid_client_metadata"


def test_oauth2_knobs(oauth2: Provider) -> None:
    oauth2.knobs.refuse_registration = True
    r = httpx.post(f"{oauth2.url}/oauth/register", json={"redirect_uris": [CALLBACK]})
    assert r.status_code == 403 and r.json()["error"] == "access_denied"
    oauth2.knobs.refuse_registration = False
    reg = register_oauth2(oauth2)

    oauth2.knobs.auto_approve, oauth2.knobs.auto_deny = None, True
    client = oauth2_client(oauth2, reg)
    url, state = client.create_authorization_url(f"{oauth2.url}/oauth/authorize",
                                                 code_verifier=secrets.token_urlsafe(48))
    assert query(httpx.get(url).headers["location"]) == {
        "error": "access_denied", "error_description": query(httpx.get(url).headers[
            "location"])["error_description"], "state": state}
    oauth2.knobs.auto_deny, oauth2.knobs.auto_approve = False, "alice"

    token_url = f"{oauth2.url}/oauth/token"
    oauth2.knobs.token_endpoint = "down"
    r = httpx.post(token_url, data={"grant_type": "authorization_code"})
    assert r.status_code == 503 and r.headers["content-type"].startswith("text/html")
    oauth2.knobs.token_endpoint = "garbage"
    r = httpx.post(token_url, data={"grant_type": "authorization_code"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    with pytest.raises(ValueError):
        r.json()
    oauth2.knobs.token_endpoint = "reset"
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(token_url, data={"grant_type": "authorization_code"})
    oauth2.knobs.token_endpoint = "ok"

    # a revoked token: 401 on use, and its refresh token is refused
    client = oauth2_client(oauth2, reg)
    token = oauth2_tokens(oauth2, client)
    assert oauth2.state.revoke_tokens("alice") >= 1
    assert client.get(f"{oauth2.url}/userinfo").status_code == 401
    with pytest.raises(Exception, match="invalid_grant"):
        client.refresh_token(token_url, refresh_token=token["refresh_token"])

    # a revoked client: invalid_client at the token endpoint, its tokens dead
    client = oauth2_client(oauth2, reg)
    oauth2_tokens(oauth2, client)
    oauth2.state.revoke_client(reg["client_id"])
    assert client.get(f"{oauth2.url}/userinfo").status_code == 401
    r = httpx.post(token_url, data={"grant_type": "refresh_token", "refresh_token": "x"},
                   auth=(reg["client_id"], reg["client_secret"]))
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"

    oauth2.knobs.no_oauth_endpoints = True
    assert httpx.get(f"{oauth2.url}/.well-known/oauth-authorization-server").status_code == 404
    jrd = httpx.get(f"{oauth2.url}/.well-known/webfinger",
                    params={"resource": f"acct:{oauth2.acct('alice')}"}).json()
    assert ISSUER_REL not in [link["rel"] for link in jrd["links"]]


def test_delay_knob_slows_every_request() -> None:
    # no timing assertion: a client whose read timeout is far below the delay times out
    with running_oauth2_provider(knobs=Knobs(delay=2.0)) as p:
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(f"{p.url}/.well-known/oauth-authorization-server", timeout=0.2)
        p.knobs.delay = 0
        assert httpx.get(f"{p.url}/.well-known/oauth-authorization-server").status_code == 200


# ---------------------------------------------------------------------------------------------
# the pump.io-shaped provider
# ---------------------------------------------------------------------------------------------

def register_pump(p: Provider, **extra: Any) -> dict[str, Any]:
    r = httpx.post(f"{p.url}/api/client/register",
                   data={"type": "client_associate", "application_type": "web",
                         "application_name": "Self-test", "redirect_uris": CALLBACK, **extra})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def pump_tokens(p: Provider, reg: dict[str, Any],
                username: str | None = None) -> OAuth1Client:
    client = OAuth1Client(reg["client_id"], reg["client_secret"], redirect_uri=CALLBACK,
                          force_include_body=True)
    client.fetch_request_token(f"{p.url}/oauth/request_token")
    url = client.create_authorization_url(f"{p.url}/oauth/authorize")
    if username is None:
        location = httpx.get(url).headers["location"]
    else:
        location = authorize_as_user(p, url, username, f"{username}-password")
    assert location.startswith(CALLBACK)
    assert set(query(location)) == {"oauth_token", "oauth_verifier"}
    client.parse_authorization_response(location)
    client.fetch_access_token(f"{p.url}/oauth/access_token")
    return client


def test_pump_discovery_documents(pump: Provider) -> None:
    xrd = httpx.get(f"{pump.url}/.well-known/host-meta")
    assert xrd.headers["content-type"] == "application/xrd+xml"
    root = DET.fromstring(xrd.content)
    rels = {link.get("rel"): link.get("href") or link.get("template")
            for link in root.iter(f"{XRD_NS}Link")}
    assert rels["http://apinamespace.org/oauth/request_token"] == f"{pump.url}/oauth/request_token"
    assert rels["http://apinamespace.org/oauth/authorize"] == f"{pump.url}/oauth/authorize"
    assert rels["http://apinamespace.org/oauth/access_token"] == f"{pump.url}/oauth/access_token"
    assert rels["registration_endpoint"] == f"{pump.url}/api/client/register"
    jrd = httpx.get(f"{pump.url}/.well-known/host-meta",
                    headers={"Accept": "application/json"}).json()
    assert jrd == httpx.get(f"{pump.url}/.well-known/host-meta.json").json()
    assert {"rel": "lrdd", "type": "application/json",
            "template": f"{pump.url}/.well-known/webfinger?resource={{uri}}"} in jrd["links"]

    for resource in (pump.acct("alice"), f"acct:{pump.acct('alice')}"):
        links = httpx.get(f"{pump.url}/.well-known/webfinger",
                          params={"resource": resource}).json()["links"]
        by_rel = {link["rel"]: link["href"] for link in links}
        assert by_rel["self"] == f"{pump.url}/api/user/alice/profile"
        assert by_rel["activity-outbox"] == f"{pump.url}/api/user/alice/feed"
        assert by_rel["http://webfinger.net/rel/profile-page"] == f"{pump.url}/alice"
    lrdd = httpx.get(f"{pump.url}/api/lrdd", params={"resource": pump.acct("bob")})
    assert lrdd.headers["content-type"] == "application/xrd+xml"
    assert DET.fromstring(lrdd.content).tag == f"{XRD_NS}XRD"
    assert httpx.get(f"{pump.url}/.well-known/webfinger",
                     params={"resource": f"nobody@{pump.host}"}).status_code == 404
    assert httpx.get(f"{pump.url}/.well-known/webfinger",
                     params={"resource": "alice@other.example"}).status_code == 404

    pump.knobs.no_oauth_endpoints = True
    links = httpx.get(f"{pump.url}/.well-known/host-meta.json").json()["links"]
    assert not [link for link in links if "apinamespace.org/oauth" in link["rel"]]


def test_pump_registration_fields(pump: Provider) -> None:
    reg = register_pump(pump)
    assert set(reg) == {"client_id", "client_secret", "expires_at"} and reg["expires_at"] == 0
    as_json = httpx.post(f"{pump.url}/api/client/register",
                         json={"type": "client_associate", "redirect_uris": CALLBACK})
    assert as_json.status_code == 200
    bad = [({"type": "nope"}, 400),
           ({"type": "client_associate", "application_type": "desktop"}, 400),
           ({"type": "client_associate", "redirect_uris": f"{CALLBACK}{CALLBACK}"}, 400),
           ({"type": "client_associate", "client_id": "x"}, 400),
           ({"type": "client_associate", "access_token": "x"}, 400),
           ({"type": "client_update", "client_id": reg["client_id"], "client_secret": "no"}, 403)]
    for body, status in bad:
        r = httpx.post(f"{pump.url}/api/client/register", data=body)
        assert r.status_code == status and "error" in r.json(), body
    upd = httpx.post(f"{pump.url}/api/client/register",
                     data={"type": "client_update", **{k: reg[k] for k in ("client_id",
                                                                           "client_secret")},
                           "application_name": "Renamed"})
    assert upd.status_code == 200 and upd.json()["client_id"] == reg["client_id"]
    pump.knobs.refuse_registration = True
    r = httpx.post(f"{pump.url}/api/client/register", data={"type": "client_associate"})
    assert r.status_code == 403 and "error" in r.json()


def test_pump_full_flow_whoami_and_post(pump: Provider) -> None:
    reg = register_pump(pump)
    client = pump_tokens(pump, reg)
    r = client.get(f"{pump.url}/api/whoami", follow_redirects=False)
    assert r.status_code == 302 and r.headers["location"] == f"{pump.url}/api/user/alice/profile"
    # following the redirect resends a signature made for /api/whoami: refused
    assert client.get(f"{pump.url}/api/whoami", follow_redirects=True).status_code == 401
    me = client.get(r.headers["location"]).json()
    assert me["id"] == f"acct:{pump.acct('alice')}" and me["preferredUsername"] == "alice"
    assert httpx.get(r.headers["location"]).status_code in (400, 401)  # unsigned

    activity = {"verb": "post", "object": {"objectType": "note", "content": "Hello pump"}}
    posted = client.post(f"{pump.url}/api/user/alice/feed", json=activity)
    assert posted.status_code == 200, posted.text
    body = posted.json()
    assert body["verb"] == "post" and body["object"]["content"] == "Hello pump"
    assert body["object"]["id"].startswith(f"{pump.url}/api/note/")
    feed = client.get(f"{pump.url}/api/user/alice/feed").json()
    assert feed["items"][0]["id"] == body["id"]
    assert client.post(f"{pump.url}/api/user/bob/feed", json=activity).status_code == 401

    # two-legged: client credentials alone read a profile
    two_legged = OAuth1Client(reg["client_id"], reg["client_secret"])
    assert two_legged.get(f"{pump.url}/api/user/bob/profile").json()["preferredUsername"] == "bob"


def test_pump_browser_pages_deny_and_token_rules(pump: Provider) -> None:
    pump.knobs.auto_approve = None
    reg = register_pump(pump)
    client = pump_tokens(pump, reg, username="bob")
    r = client.get(f"{pump.url}/api/whoami", follow_redirects=False)
    assert r.headers["location"].endswith("/api/user/bob/profile")

    client = OAuth1Client(reg["client_id"], reg["client_secret"], redirect_uri=CALLBACK)
    client.fetch_request_token(f"{pump.url}/oauth/request_token")
    url = client.create_authorization_url(f"{pump.url}/oauth/authorize")
    assert query(authorize_as_user(pump, url, "alice", "alice-password",
                                   approve=False))["error"] == "access_denied"

    # a wrong verifier is refused and spends the request token; a used one is gone
    pump.knobs.auto_approve = "alice"
    client = OAuth1Client(reg["client_id"], reg["client_secret"], redirect_uri=CALLBACK)
    client.fetch_request_token(f"{pump.url}/oauth/request_token")
    location = httpx.get(client.create_authorization_url(f"{pump.url}/oauth/authorize"))
    client.parse_authorization_response(location.headers["location"])
    good_verifier = client.auth.verifier
    client.auth.verifier = "wrong"
    with pytest.raises(Exception, match=r"invalid_request|verifier"):
        client.fetch_access_token(f"{pump.url}/oauth/access_token")
    client.auth.verifier = good_verifier
    with pytest.raises(Exception, match="invalid_token"):
        client.fetch_access_token(f"{pump.url}/oauth/access_token")

    r = httpx.get(f"{pump.url}/oauth/authorize", params={"oauth_token": "unknown"})
    assert r.status_code == 400 and 'id="oauth-error"' in r.text


def test_pump_knobs(pump: Provider) -> None:
    reg = register_pump(pump)
    client = pump_tokens(pump, reg)
    assert pump.state.revoke_tokens("alice") == 1
    assert client.get(f"{pump.url}/api/whoami", follow_redirects=False).status_code == 401

    for mode, status in (("down", 503), ("garbage", 200)):
        pump.knobs.token_endpoint = mode
        r = OAuth1Client(reg["client_id"], reg["client_secret"], redirect_uri=CALLBACK).post(
            f"{pump.url}/oauth/request_token")
        assert r.status_code == status and r.headers["content-type"].startswith("text/html")
    pump.knobs.token_endpoint = "ok"

    client = pump_tokens(pump, reg)
    pump.state.revoke_client(reg["client_id"])
    assert client.get(f"{pump.url}/api/whoami", follow_redirects=False).status_code == 401
    fresh = OAuth1Client(reg["client_id"], reg["client_secret"], redirect_uri=CALLBACK)
    with pytest.raises(Exception, match="invalid_client"):
        fresh.fetch_request_token(f"{pump.url}/oauth/request_token")

    pump.knobs.auto_approve, pump.knobs.auto_deny = None, True
    reg = register_pump(pump)
    client = OAuth1Client(reg["client_id"], reg["client_secret"], redirect_uri=CALLBACK)
    client.fetch_request_token(f"{pump.url}/oauth/request_token")
    r = httpx.get(client.create_authorization_url(f"{pump.url}/oauth/authorize"))
    assert query(r.headers["location"])["error"] == "access_denied"


# ---------------------------------------------------------------------------------------------
# the Mastodon-shaped provider
# ---------------------------------------------------------------------------------------------

def register_mastodon(p: Provider, scopes: str = "read write") -> dict[str, Any]:
    r = httpx.post(f"{p.url}/api/v1/apps",
                   data={"client_name": "Self-test", "redirect_uris": CALLBACK,
                         "scopes": scopes, "website": "http://127.0.0.1:9/"})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def mastodon_client(p: Provider, reg: dict[str, Any], username: str | None = None,
                    scope: str = "read write") -> tuple[OAuth2Client, dict[str, Any]]:
    client = OAuth2Client(reg["client_id"], reg["client_secret"], scope=scope,
                          redirect_uri=CALLBACK, code_challenge_method="S256",
                          token_endpoint_auth_method="client_secret_post")
    verifier = secrets.token_urlsafe(48)
    url, _ = client.create_authorization_url(f"{p.url}/oauth/authorize", code_verifier=verifier)
    location = (httpx.get(url).headers["location"] if username is None
                else authorize_as_user(p, url, username, f"{username}-password"))
    token = client.fetch_token(f"{p.url}/oauth/token", authorization_response=location,
                               code_verifier=verifier)
    return client, token


def test_mastodon_discovery_documents(mastodon: Provider) -> None:
    md = httpx.get(f"{mastodon.url}/.well-known/oauth-authorization-server").json()
    AuthorizationServerMetadata(md).validate()
    assert md["issuer"] == f"{mastodon.url}/"  # Mastodon's root_url, with the slash
    assert md["app_registration_endpoint"] == f"{mastodon.url}/api/v1/apps"
    assert "registration_endpoint" not in md  # /api/v1/apps is not RFC 7591
    jrd = httpx.get(f"{mastodon.url}/.well-known/webfinger",
                    params={"resource": f"acct:{mastodon.acct('alice')}"}).json()
    assert jrd["subject"] == f"acct:{mastodon.acct('alice')}"
    rels = {link["rel"]: link for link in jrd["links"]}
    assert rels["self"]["type"] == "application/activity+json"
    assert rels["http://webfinger.net/rel/profile-page"]["href"] == f"{mastodon.url}/@alice"
    assert httpx.get(f"{mastodon.url}/.well-known/webfinger",
                     params={"resource": f"acct:nobody@{mastodon.host}"}).status_code == 404
    root = DET.fromstring(httpx.get(f"{mastodon.url}/.well-known/host-meta").content)
    assert [link.get("rel") for link in root.iter(f"{XRD_NS}Link")] == ["lrdd"]
    info = httpx.get(httpx.get(f"{mastodon.url}/.well-known/nodeinfo").json()["links"][0]["href"])
    assert info.json()["software"]["name"] == "mastodon"


def test_mastodon_full_flow(mastodon: Provider) -> None:
    reg = register_mastodon(mastodon)
    assert reg["redirect_uris"] == [CALLBACK] and reg["scopes"] == ["read", "write"]
    client, token = mastodon_client(mastodon, reg)
    assert set(token) >= {"access_token", "token_type", "scope", "created_at"}
    assert "refresh_token" not in token and "expires_in" not in token
    me = client.get(f"{mastodon.url}/api/v1/accounts/verify_credentials").json()
    assert me["username"] == "alice" and me["url"] == f"{mastodon.url}/@alice"
    assert "email" not in me
    status = client.post(f"{mastodon.url}/api/v1/statuses", data={"status": "Hi <there>"})
    assert status.status_code == 200
    assert status.json()["content"] == "<p>Hi &lt;there&gt;</p>"
    assert httpx.get(f"{mastodon.url}/api/v1/statuses/{status.json()['id']}").status_code == 200

    # JSON registration with an array of redirect URIs (Mastodon 4.3)
    r = httpx.post(f"{mastodon.url}/api/v1/apps",
                   json={"client_name": "J", "redirect_uris": [CALLBACK, f"{CALLBACK}2"]})
    assert r.json()["redirect_uris"] == [CALLBACK, f"{CALLBACK}2"]
    assert r.json()["scopes"] == ["read"]
    r = httpx.post(f"{mastodon.url}/api/v1/apps", data={"redirect_uris": CALLBACK})
    assert r.status_code == 422 and "error" in r.json()


def test_mastodon_pages_scopes_and_knobs(mastodon: Provider) -> None:
    mastodon.knobs.auto_approve = None
    reg = register_mastodon(mastodon)
    client, _ = mastodon_client(mastodon, reg, username="carol", scope="read")
    assert client.get(f"{mastodon.url}/api/v1/accounts/verify_credentials").json()[
        "username"] == "carol"
    r = client.post(f"{mastodon.url}/api/v1/statuses", data={"status": "no"})
    assert r.status_code == 403 and "error" in r.json()

    mastodon.state.revoke_tokens()
    r = client.get(f"{mastodon.url}/api/v1/accounts/verify_credentials")
    assert r.status_code == 401 and r.json() == {"error": "The access token was revoked"}

    mastodon.knobs.refuse_registration = True
    r = httpx.post(f"{mastodon.url}/api/v1/apps",
                   data={"client_name": "x", "redirect_uris": CALLBACK})
    assert r.status_code == 403 and "error" in r.json()
    mastodon.knobs.token_endpoint = "garbage"
    r = httpx.post(f"{mastodon.url}/oauth/token", data={"grant_type": "authorization_code"})
    assert r.status_code == 200 and re.match(r"\s*<html", r.text)
