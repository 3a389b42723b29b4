"""``clarion.django.connect`` (issue 13 §2-4): the Django side, against real providers.

Django runs in this process with tests/connect_site/settings.py (the webhook tests' settings plus
the connect app, the seed's PumpModel app and the site's URLs), on PostgreSQL, driven by Django's
test ``Client``. The providers are real HTTP servers (tests/providers: authlib's OAuth 2 and
OAuth 1 servers under Flask/werkzeug on 127.0.0.1) with ``auto_approve`` set, so the browser's
part — follow the redirect to the provider, come back with its redirect — is an httpx request to
the provider and a test-client request to the Location it answers. The Chromium runs are
tests/test_connect_flow.py's.

A process configures Django once: when this module is imported first, connect_site's settings
(a superset of webhook_apps', its URLs included) serve the whole run; when another module
configured webhook_apps' settings first, this module needs "clarion.django.connect" and
"connect_site.pumpapp" in their INSTALLED_APPS and says so.
"""

from __future__ import annotations

import html
import os
import re
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

import django
import httpx
import pytest
from django.conf import settings as django_settings

if not django_settings.configured:
    os.environ.setdefault("CLARION_TEST_PG_DB", f"clarion_tests_{os.getpid()}")
    os.environ.setdefault(
        "CLARION_TEST_SQLITE", f"/tmp/clarion-webhook-tests-{os.getpid()}.sqlite3")
    os.environ["DJANGO_SETTINGS_MODULE"] = "connect_site.settings"
    django.setup()

from cryptography.fernet import Fernet
from django.apps import apps
from django.core import checks, mail
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client, override_settings

if not apps.is_installed("clarion.django.connect"):  # pragma: no cover - a suite-order problem
    pytest.fail("Django was configured before this module without clarion.django.connect: "
                "tests/webhook_apps/settings.py's INSTALLED_APPS needs "
                "'clarion.django.connect' and 'connect_site.pumpapp'", pytrace=False)

from django.contrib.auth.models import User

from clarion.django.connect import WebPump, emails, signals, state
from clarion.django.connect.checks import check_connect_settings
from clarion.django.connect.models import (
    ConnectedAccount,
    FlowState,
    ServerClient,
)
from clarion.django.hooks import hooks
from clarion.django.models import Event
from clarion.errors import RevokedError
from connect_site.pumpapp.models import PumpModel
from providers.base import Provider
from providers.mastodon import running_mastodon_provider
from providers.oauth2 import running_oauth2_provider
from providers.pump import running_pump_provider
from webhook_support import clean_db, webhook_databases  # noqa: F401  (fixtures)

CONNECT = {"ALLOWED_NETWORKS": ["127.0.0.0/8"], "ALLOW_HTTP": True, "CLIENT_NAME": "Test site",
           "SCOPES": {"oauth2": ["profile", "email", "notes"]}}
TABLES = ("clarion_connect_connectedaccount", "clarion_connect_flowstate",
          "clarion_connect_serverclient", "pumpapp_pumpmodel")


def clarion(**connect: Any) -> dict[str, Any]:
    return {**django_settings.CLARION, "CONNECT": {**CONNECT, **connect}}


# -- providers, one of each per module; knobs reset per test --------------------------------

@pytest.fixture(scope="module")
def oauth2() -> Iterator[Provider]:
    with running_oauth2_provider() as provider:
        yield provider


@pytest.fixture(scope="module")
def pump() -> Iterator[Provider]:
    with running_pump_provider() as provider:
        yield provider


@pytest.fixture(scope="module")
def mastodon() -> Iterator[Provider]:
    with running_mastodon_provider() as provider:
        yield provider


@pytest.fixture
def site(clean_db: None, oauth2: Provider, pump: Provider,  # noqa: F811
         mastodon: Provider) -> Iterator[Site]:
    with connection.cursor() as cur:
        cur.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
    for provider in (oauth2, pump, mastodon):
        provider.knobs.__init__()  # type: ignore[misc]
        provider.knobs.auto_approve = "alice"
    mail.outbox = []
    with override_settings(CLARION=clarion()):
        yield Site(User.objects.create_user("dora", password="dora-pw"))
    # Leave no row behind: other modules' clarion_reencrypt tests count every stored secret.
    with connection.cursor() as cur:
        cur.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")


class Site:
    def __init__(self, user: User) -> None:
        self.user = user
        self.browser = self.login(user)

    @staticmethod
    def login(user: User) -> Client:
        client = Client()
        client.force_login(user)
        return client

    def start(self, address: str, browser: Client | None = None, next: str = "") -> Any:
        """What a user does from a link: open ``connect/<address>/`` (a form, prefilled, that
        starts nothing) and press Connect (the POST)."""
        browser = browser or self.browser
        query = f"?{urlencode({'next': next})}" if next else ""
        page = browser.get(f"/accounts/connect/{address}/{query}")
        assert page.status_code == 200, (page.status_code, page.content[:500])
        fields = dict(re.findall(rb'<input type="(?:text|hidden)" name="(\w+)" value="([^"]*)"',
                                 page.content))
        assert html.unescape(fields[b"address"].decode()) == address
        data = {"address": address}
        if b"next" in fields:
            data["next"] = html.unescape(fields[b"next"].decode())
        return browser.post("/accounts/connect/", data)

    def approve(self, response: Any) -> str:
        """Follow the redirect to the provider (which approves at once) and return the
        callback URL it redirects back to."""
        assert response.status_code == 302, (response.status_code, response.content[:500])
        answer = httpx.get(response["Location"], follow_redirects=False, timeout=15)
        assert answer.status_code in (302, 303), (answer.status_code, answer.text[:500])
        return answer.headers["location"]

    def back(self, url: str, browser: Client | None = None) -> Any:
        parts = urlsplit(url)
        return (browser or self.browser).get(f"{parts.path}?{parts.query}")

    def connect(self, address: str, browser: Client | None = None) -> Any:
        return self.back(self.approve(self.start(address, browser)), browser)


def error_of(response: Any) -> str:
    match = re.search(rb'<p id="connect-error"[^>]*>(.*?)</p>', response.content, re.S)
    assert match, response.content[:800]
    return match.group(1).decode()


def raw(table: str, column: str, pk: int) -> str:
    with connection.cursor() as cur:
        cur.execute(f"SELECT {column} FROM {table} WHERE id = %s", [pk])
        return str(cur.fetchone()[0])


@contextmanager
def received(signal: Any) -> Iterator[list[dict[str, Any]]]:
    got: list[dict[str, Any]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        got.append(kwargs)

    signal.connect(receiver, weak=False)
    try:
        yield got
    finally:
        signal.disconnect(receiver)


# -- the flows --------------------------------------------------------------------------------

def test_oauth2_flow_connects_encrypts_and_tells(site: Site, oauth2: Provider,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="clarion")
    with received(signals.account_connected) as sent:
        response = site.connect(oauth2.acct("alice"))
    assert response.status_code == 302, response.content[:500]
    assert response["Location"] == "/accounts/connect/accounts/"
    account = ConnectedAccount.objects.get()
    assert account.user == site.user
    assert account.handle == oauth2.acct("alice")
    assert account.email == "alice@example.org" and account.email_verified
    assert account.server.kind == "oauth2" and account.server.protocol == "oauth2"
    assert account.access_token and account.refresh_token
    # Encrypted at rest: the raw columns are Fernet tokens, not the tokens themselves.
    for column in ("access_token", "refresh_token"):
        stored = raw("clarion_connect_connectedaccount", column, account.pk)
        assert stored.startswith("enc:v1:") and getattr(account, column) not in stored
    stored = raw("clarion_connect_serverclient", "client_secret", account.server.pk)
    assert stored.startswith("enc:v1:") and account.server.client_secret not in stored
    assert account.access_token not in repr(account)
    assert account.server.client_secret not in repr(account.server)
    # The signal and the hook (no token in its payload).
    assert len(sent) == 1 and sent[0]["account"].pk == account.pk and sent[0]["created"]
    event = Event.objects.get(hook="clarion.account.connected")
    assert event.data["handle"] == account.handle and event.owner_id == site.user.pk
    for secret in (account.access_token, account.refresh_token, account.server.client_secret):
        assert secret not in event.payload
    # The list shows it; the state row is spent.
    page = site.browser.get("/accounts/connect/accounts/")
    assert oauth2.acct("alice").encode() in page.content
    assert FlowState.objects.get().consumed_at is not None
    # Acting for the user (notes are for pump.io and Mastodon: see the tests below).
    assert account.whoami().handle in ("alice", oauth2.acct("alice"))
    # Clarion's log lines name the account, never a secret.
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("clarion"))
    assert oauth2.acct("alice") in ours
    for secret in (account.access_token, account.refresh_token, account.server.client_secret,
                   FlowState.objects.get().secret):
        assert secret not in ours


def test_client_registered_once_per_server(site: Site, oauth2: Provider) -> None:
    before = sum(p.endswith("/oauth/register") for p in oauth2.paths_seen())
    site.connect(oauth2.acct("alice"))
    second = Site(User.objects.create_user("eve"))
    second.connect(oauth2.acct("alice"))
    assert ServerClient.objects.count() == 1
    assert ConnectedAccount.objects.count() == 2
    assert sum(p.endswith("/oauth/register") for p in oauth2.paths_seen()) == before + 1


def test_pump_flow_whoami_and_note(site: Site, pump: Provider) -> None:
    response = site.connect(pump.acct("alice"))
    assert response.status_code == 302, response.content[:800]
    account = ConnectedAccount.objects.get()
    assert account.server.kind == "pump" and account.server.protocol == "oauth1"
    assert account.token_secret
    stored = raw("clarion_connect_connectedaccount", "token_secret", account.pk)
    assert stored.startswith("enc:v1:") and account.token_secret not in stored
    assert account.whoami().handle.startswith("alice")
    assert account.post_note("a note from WebPump's successor")
    assert any(p.endswith("/api/user/alice/feed") for p in pump.paths_seen())


def test_mastodon_flow_and_status(site: Site, mastodon: Provider) -> None:
    response = site.connect("@" + mastodon.acct("alice"))
    assert response.status_code == 302, response.content[:800]
    account = ConnectedAccount.objects.get()
    assert account.server.kind == "mastodon"
    assert set(account.scopes.split()) >= {"read", "write"}
    assert account.post_note("toot")
    assert any(p.endswith("/api/v1/statuses") for p in mastodon.paths_seen())


def test_templates_can_be_overridden(site: Site) -> None:
    templates = [{
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "OPTIONS": {"loaders": [
            ("django.template.loaders.locmem.Loader",
             {"clarion/connect/error.html": "SITE'S OWN: {{ reason }} ({{ status }})"}),
            "django.template.loaders.app_directories.Loader"]},
    }]
    with override_settings(TEMPLATES=templates):
        response = site.browser.get("/accounts/connect/callback/?code=abc")
    assert response.status_code == 400
    assert response.content.startswith(b"SITE'S OWN: The server&#x27;s answer carries no state")


def test_next_is_kept_if_local(site: Site, oauth2: Provider) -> None:
    response = site.start(oauth2.acct("alice"), next="/profile/")
    assert site.back(site.approve(response))["Location"] == "/profile/"
    response = site.start(oauth2.acct("alice"), next="https://evil.example/")
    assert site.back(site.approve(response))["Location"] == "/accounts/connect/accounts/"


def test_a_link_to_an_address_starts_nothing_until_the_form_is_posted_with_csrf(
        site: Site, oauth2: Provider) -> None:
    # Another site's link (or image) sends the signed-in user to connect/<address>/: the
    # answer is only the prefilled form, no discovery, no state, no redirect.
    page = site.browser.get(f"/accounts/connect/{oauth2.acct('alice')}/")
    assert page.status_code == 200 and b'id="connect-confirm"' in page.content
    assert b"csrfmiddlewaretoken" in page.content
    assert not FlowState.objects.exists() and not ServerClient.objects.exists()
    # A cross-site POST has no CSRF token: refused, nothing started.
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(site.user)
    refused = strict.post("/accounts/connect/", {"address": oauth2.acct("alice")})
    assert refused.status_code == 403
    refused = strict.post(f"/accounts/connect/{oauth2.acct('alice')}/",
                          {"address": oauth2.acct("alice")})
    assert refused.status_code == 403
    assert not FlowState.objects.exists()
    # The user's own press of Connect carries the token and starts.
    form = strict.get(f"/accounts/connect/{oauth2.acct('alice')}/")
    token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', form.content)
    assert token
    started = strict.post("/accounts/connect/", {"address": oauth2.acct("alice"),
                                                 "csrfmiddlewaretoken": token.group(1).decode()})
    assert started.status_code == 302 and started["Location"].startswith(oauth2.url)
    assert FlowState.objects.count() == 1


def test_a_server_failure_for_a_profile_url_shows_the_error_page_with_a_retry_link(
        site: Site, oauth2: Provider) -> None:
    # A URL holds "/", which connect/<str:webfinger>/ cannot take: the retry link is the form
    # with ?address= (it was a NoReverseMatch, a 500).
    oauth2.knobs.refuse_registration = True
    address = f"{oauth2.url}/users/alice"
    response = site.browser.post("/accounts/connect/", {"address": address})
    assert response.status_code == 502 and error_of(response)
    link = re.search(rb'id="connect-retry" href="([^"]+)"', response.content)
    assert link
    retry = site.browser.get(html.unescape(link.group(1).decode()))
    assert retry.status_code == 200 and html.escape(address).encode() in retry.content


def test_the_stored_handle_is_the_signed_in_user_not_the_typed_one(
        site: Site, oauth2: Provider, caplog: pytest.LogCaptureFixture) -> None:
    # Typed: the victim's address. Signed in at the provider: carol. Carol's tokens must not
    # be filed under the victim's handle.
    oauth2.knobs.auto_approve = "carol"
    response = site.connect(oauth2.acct("alice"))
    assert response.status_code == 302, response.content[:500]
    [account] = ConnectedAccount.objects.all()
    assert account.handle == oauth2.acct("carol")
    assert any("the server signed in" in r.getMessage() for r in caplog.records)


def test_form_post_starts_the_flow(site: Site, oauth2: Provider) -> None:
    page = site.browser.get("/accounts/connect/")
    # A browser applies form-action to the redirect after the POST: the user's server (any
    # https: origin; http: with ALLOW_HTTP) must be allowed, framing still not.
    csp = page["Content-Security-Policy"]
    assert "form-action 'self' https: http:" in csp and "frame-ancestors 'none'" in csp
    assert page["X-Frame-Options"] == "DENY" and page["Cache-Control"] == "no-store"
    response = site.browser.post("/accounts/connect/", {"address": oauth2.acct("alice")})
    assert response.status_code == 302 and response["Location"].startswith(oauth2.url)
    bad = site.browser.post("/accounts/connect/", {"address": "two words"})
    assert bad.status_code == 400


def test_open_connection_attempts_are_capped_per_user(site: Site, oauth2: Provider) -> None:
    for _ in range(state.MAX_OPEN_PER_USER):
        assert site.start(oauth2.acct("alice")).status_code == 302
    refused = site.start(oauth2.acct("alice"))
    assert refused.status_code == 429 and "connection attempts open" in error_of(refused)
    assert FlowState.objects.count() == state.MAX_OPEN_PER_USER
    # Another user is not held up by dora's.
    other = Site(User.objects.create_user("erin", password="erin-pw"))
    assert other.start(oauth2.acct("alice")).status_code == 302


def test_login_required(site: Site, oauth2: Provider) -> None:
    response = Client().get(f"/accounts/connect/{oauth2.acct('alice')}/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")
    assert not FlowState.objects.exists()


# -- the state ----------------------------------------------------------------------------------

def test_state_is_single_use(site: Site, oauth2: Provider) -> None:
    callback = site.approve(site.start(oauth2.acct("alice")))
    assert site.back(callback).status_code == 302
    again = site.back(callback)
    assert again.status_code == 400 and "completed already" in error_of(again)
    assert ConnectedAccount.objects.count() == 1


def test_state_of_another_session_is_refused(site: Site, oauth2: Provider) -> None:
    callback = site.approve(site.start(oauth2.acct("alice")))
    other = Site.login(site.user)  # the same user, another browser
    response = site.back(callback, other)
    assert response.status_code == 403 and "another browser session" in error_of(response)
    assert not ConnectedAccount.objects.exists()


def test_state_expired(site: Site, oauth2: Provider) -> None:
    callback = site.approve(site.start(oauth2.acct("alice")))
    FlowState.objects.update(expires_at=datetime.now(UTC) - timedelta(seconds=1))
    response = site.back(callback)
    assert response.status_code == 400 and "expired" in error_of(response)
    assert not ConnectedAccount.objects.exists()


def test_state_missing_or_unknown(site: Site) -> None:
    response = site.browser.get("/accounts/connect/callback/?code=abc")
    assert response.status_code == 400 and "no state" in error_of(response)
    response = site.browser.get("/accounts/connect/callback/?code=abc&state=forged")
    assert response.status_code == 400 and "unknown" in error_of(response)


def test_state_ttl_setting_and_hashing(site: Site, oauth2: Provider) -> None:
    with override_settings(CLARION=clarion(STATE_TTL=60)):
        site.start(oauth2.acct("alice"))
    flow = FlowState.objects.get()
    assert timedelta(seconds=50) < flow.expires_at - flow.created_at <= timedelta(seconds=61)
    assert raw("clarion_connect_flowstate", "secret", flow.pk).startswith("enc:v1:")


# -- the errors of §4 ---------------------------------------------------------------------------

def test_denied(site: Site, oauth2: Provider, pump: Provider) -> None:
    for provider in (oauth2, pump):
        provider.knobs.auto_approve = None
        provider.knobs.auto_deny = True
        response = site.connect(provider.acct("alice"))
        assert response.status_code == 403, response.content[:500]
        assert "did not authorize" in error_of(response)
    assert not ConnectedAccount.objects.exists()


def test_unknown_host_and_unknown_user(site: Site, oauth2: Provider) -> None:
    response = site.start("alice@no-such-host.invalid")
    assert response.status_code == 400 and "no-such-host.invalid" in error_of(response)
    response = site.start(oauth2.acct("nobody"))
    assert response.status_code == 400 and error_of(response)
    assert not FlowState.objects.exists() and not ServerClient.objects.exists()


def test_address_policy_applies(site: Site, oauth2: Provider) -> None:
    with override_settings(CLARION=clarion(ALLOWED_NETWORKS=[])):
        response = site.start(oauth2.acct("alice"))
    assert response.status_code == 400
    assert "127.0.0.1 is a loopback address" in error_of(response)
    assert not ServerClient.objects.exists()


def test_no_oauth_endpoints(site: Site, oauth2: Provider, pump: Provider) -> None:
    for provider in (oauth2, pump):
        provider.knobs.no_oauth_endpoints = True
        response = site.start(provider.acct("alice"))
        assert response.status_code == 400, (provider.kind, response.content[:500])
    assert not ServerClient.objects.exists()


def test_registration_refused(site: Site, oauth2: Provider) -> None:
    oauth2.knobs.refuse_registration = True
    response = site.start(oauth2.acct("alice"))
    assert response.status_code == 502 and error_of(response)
    assert not ServerClient.objects.exists() and not FlowState.objects.exists()


@pytest.mark.parametrize("mode", ["down", "garbage", "reset"])
def test_token_endpoint_failures(site: Site, oauth2: Provider, mode: str,
                                 caplog: pytest.LogCaptureFixture) -> None:
    callback = site.approve(site.start(oauth2.acct("alice")))
    oauth2.knobs.token_endpoint = mode
    response = site.back(callback)
    assert response.status_code == 502, response.content[:500]
    assert error_of(response)
    assert not ConnectedAccount.objects.exists()
    code = dict(p.split("=", 1) for p in urlsplit(callback).query.split("&"))["code"]
    assert code not in caplog.text


# -- tokens over time ---------------------------------------------------------------------------

def test_refresh_saves_tokens_and_tells(site: Site, oauth2: Provider) -> None:
    site.connect(oauth2.acct("alice"))
    account = ConnectedAccount.objects.get()
    old_access, old_refresh = account.access_token, account.refresh_token
    ConnectedAccount.objects.update(expires_at=datetime.now(UTC) - timedelta(minutes=1))
    account.refresh_from_db()
    with received(signals.token_refreshed) as sent:
        assert account.whoami()
    account.refresh_from_db()
    assert account.access_token != old_access and account.refresh_token != old_refresh
    assert account.expires_at > datetime.now(UTC)
    assert raw("clarion_connect_connectedaccount", "access_token",
               account.pk).startswith("enc:v1:")
    assert len(sent) == 1
    event = Event.objects.get(hook="clarion.account.token_refreshed")
    assert account.access_token not in event.payload and account.refresh_token not in event.payload


def test_short_lived_token_refreshed_while_connecting(site: Site, oauth2: Provider) -> None:
    """Tokens living less than authlib's refresh leeway (60 s) are refreshed by the whoami made
    while connecting; the refresh token saved must be the rotated one."""
    oauth2.knobs.access_token_ttl = 45
    assert site.connect(oauth2.acct("alice")).status_code == 302
    oauth2.knobs.access_token_ttl = 3600
    account = ConnectedAccount.objects.get()
    ConnectedAccount.objects.update(expires_at=datetime.now(UTC) - timedelta(minutes=1))
    account.refresh_from_db()
    assert account.whoami()  # refreshes with the saved refresh token: it must still work
    account.refresh_from_db()
    assert account.expires_at > datetime.now(UTC) + timedelta(minutes=30)


def test_revoked_token_needs_reconnect(site: Site, oauth2: Provider) -> None:
    site.connect(oauth2.acct("alice"))
    account = ConnectedAccount.objects.get()
    oauth2.state.revoke_tokens("alice")
    with pytest.raises(RevokedError):
        account.whoami()
    account.refresh_from_db()
    assert account.needs_reconnect
    assert b"connect again" in site.browser.get("/accounts/connect/accounts/").content
    # Connecting again renews the tokens of the same account.
    with received(signals.account_connected) as sent:
        site.connect(oauth2.acct("alice"))
    account.refresh_from_db()
    assert not account.needs_reconnect and ConnectedAccount.objects.count() == 1
    assert sent[0]["created"] is False
    assert account.whoami()


def test_revoked_client_is_registered_again(site: Site, pump: Provider, oauth2: Provider) -> None:
    site.connect(pump.acct("alice"))
    client = ServerClient.objects.get()
    pump.state.revoke_client(client.client_id)
    response = site.connect(pump.acct("alice"))
    assert response.status_code == 302, response.content[:800]
    client.refresh_from_db()
    assert client.registrations == 2
    assert ConnectedAccount.objects.get().whoami()
    # OAuth 2: the server would show its own error page at the authorization endpoint, so
    # the site checks its client before sending the user there, and registers again.
    site.connect(oauth2.acct("alice"))
    client2 = ServerClient.objects.get(kind="oauth2")
    oauth2.state.revoke_client(client2.client_id)
    assert site.connect(oauth2.acct("alice")).status_code == 302
    client2.refresh_from_db()
    assert client2.registrations == 2
    # Revoked between the redirect and the callback: the exchange fails, the site registers
    # again and says to connect once more.
    callback = site.approve(site.start(oauth2.acct("alice")))
    client2.refresh_from_db()
    oauth2.state.revoke_client(client2.client_id)
    response = site.back(callback)
    assert response.status_code == 502 and "registered again" in error_of(response)
    client2.refresh_from_db()
    assert client2.registrations == 3
    assert site.connect(oauth2.acct("alice")).status_code == 302


# -- disconnect -------------------------------------------------------------------------------

def test_disconnect(site: Site, oauth2: Provider) -> None:
    site.connect(oauth2.acct("alice"))
    account = ConnectedAccount.objects.get()
    url = f"/accounts/connect/{account.pk}/disconnect/"
    assert site.browser.get(url).status_code == 405
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(site.user)
    assert strict.post(url).status_code == 403
    intruder = Site.login(User.objects.create_user("mallory"))
    assert intruder.post(url).status_code == 404
    with received(signals.account_disconnected) as sent:
        response = site.browser.post(url)
    assert response.status_code == 302 and not ConnectedAccount.objects.exists()
    assert sent[0]["account"].handle == account.handle
    assert Event.objects.filter(hook="clarion.account.disconnected").count() == 1


# -- §3: the email check ------------------------------------------------------------------------

def test_email_pause_and_resume_in_another_browser(site: Site, oauth2: Provider) -> None:
    oauth2.knobs.auto_approve = "carol"  # no email at all
    with override_settings(CLARION=clarion(REQUIRE_EMAIL=True)):
        response = site.connect(oauth2.acct("carol"))
        assert response.status_code == 302 and response["Location"] == "/accounts/connect/email/"
        assert not ConnectedAccount.objects.exists()
        flow = FlowState.objects.get()
        assert flow.stage == "email"
        assert raw("clarion_connect_flowstate", "paused", flow.pk).startswith("enc:v1:")
        form = site.browser.get("/accounts/connect/email/")
        assert form.status_code == 200 and b"email" in form.content
        sent = site.browser.post("/accounts/connect/email/", {"email": "carol@site.example"})
        assert sent.status_code == 200 and b"carol@site.example" in sent.content
        assert len(mail.outbox) == 1 and mail.outbox[0].to == ["carol@site.example"]
        link = re.search(r"https?://\S+", mail.outbox[0].body).group(0)
        other = Client()  # another browser: no session, not signed in
        done = other.get(urlsplit(link).path)
        assert done.status_code == 200, done.content[:500]
        account = ConnectedAccount.objects.get()
        assert account.user == site.user and account.email == "carol@site.example"
        assert account.email_verified
        again = Client().get(urlsplit(link).path)
        assert again.status_code == 400 and "used already" in error_of(again)
        tampered = Client().get(urlsplit(link).path[:-3] + "xyz/")
        assert tampered.status_code == 400
        assert ConnectedAccount.objects.count() == 1


def test_email_not_sent_keeps_the_flow_paused(site: Site, oauth2: Provider,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(emails, "EMAIL_INTERVAL", 0.0)  # the retry comes at once here
    oauth2.knobs.auto_approve = "carol"
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with override_settings(CLARION=clarion(REQUIRE_EMAIL=True)):
        site.connect(oauth2.acct("carol"))
        with override_settings(EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
                               EMAIL_HOST="127.0.0.1", EMAIL_PORT=port, EMAIL_TIMEOUT=5):
            failed = site.browser.post("/accounts/connect/email/", {"email": "c@site.example"})
        assert failed.status_code == 502 and "could not be sent" in error_of(failed)
        assert FlowState.objects.get().stage == "email"
        sent = site.browser.post("/accounts/connect/email/", {"email": "c@site.example"})
        assert sent.status_code == 200 and len(mail.outbox) == 1


def test_email_link_replaced_and_verified_email_skips(site: Site, oauth2: Provider,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(emails, "EMAIL_INTERVAL", 0.0)  # the second address comes at once
    oauth2.knobs.auto_approve = "bob"  # an email, not verified
    with override_settings(CLARION=clarion(REQUIRE_EMAIL=True)):
        site.connect(oauth2.acct("bob"))
        site.browser.post("/accounts/connect/email/", {"email": "bob@one.example"})
        site.browser.post("/accounts/connect/email/", {"email": "bob@two.example"})
        first, second = (re.search(r"https?://\S+", m.body).group(0) for m in mail.outbox)
        old = Client().get(urlsplit(first).path)
        assert old.status_code == 400 and "newer" in error_of(old)
        assert Client().get(urlsplit(second).path).status_code == 200
        assert ConnectedAccount.objects.get().email == "bob@two.example"
        oauth2.knobs.auto_approve = "alice"  # verified by the server: no pause
        assert site.connect(oauth2.acct("alice"))["Location"] == "/accounts/connect/accounts/"


def test_confirmation_emails_are_spaced_and_capped_per_flow(
        site: Site, oauth2: Provider, monkeypatch: pytest.MonkeyPatch) -> None:
    oauth2.knobs.auto_approve = "carol"
    with override_settings(CLARION=clarion(REQUIRE_EMAIL=True)):
        site.connect(oauth2.acct("carol"))
        first = site.browser.post("/accounts/connect/email/", {"email": "a@site.example"})
        assert first.status_code == 200
        at_once = site.browser.post("/accounts/connect/email/", {"email": "b@site.example"})
        assert at_once.status_code == 429 and "less than 30 seconds" in error_of(at_once)
        assert len(mail.outbox) == 1
        monkeypatch.setattr(emails, "EMAIL_INTERVAL", 0.0)
        for i in range(emails.MAX_EMAILS - 1):
            sent = site.browser.post("/accounts/connect/email/", {"email": f"x{i}@site.example"})
            assert sent.status_code == 200
        over = site.browser.post("/accounts/connect/email/", {"email": "y@site.example"})
        assert over.status_code == 429 and "no more are sent" in error_of(over)
        assert len(mail.outbox) == emails.MAX_EMAILS
        # The last link sent still works.
        link = re.search(r"https?://\S+", mail.outbox[-1].body).group(0)
        assert Client().get(urlsplit(link).path).status_code == 200


# -- WebPump and the seed's example ---------------------------------------------------------------

def test_seed_example_view(site: Site, pump: Provider) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        response = site.browser.get(f"/pump/{pump.acct('alice')}/")
        callback = site.approve(response)
        assert callback.startswith("http://my_app.com/oauth/authorize?")
        done = site.back(callback)
    assert done.status_code == 302 and done["Location"] == "/profile", done.content[:500]
    row = PumpModel.objects.get()
    assert row.key and row.secret and row.expirey == 0 and row.token and row.token_secret
    names = {str(w.message).split("(")[0] for w in caught
             if issubclass(w.category, DeprecationWarning)}
    assert any("get_registeration" in n for n in names) and any("get_registrat" in n
                                                               for n in names)
    # A second visit finds the access token: no new authorization, straight to the profile.
    with pytest.warns(DeprecationWarning, match="misspelling"):
        again = site.browser.get(f"/pump/{pump.acct('alice')}/")
    assert again.status_code == 302 and again["Location"] == f"/profile/{pump.acct('alice')}"
    # The stored access token acts for alice.
    pump2 = WebPump(row.webfinger, client_type="web", client_name="DjangoApp", key=row.key,
                    secret=row.secret, token=row.token, token_secret=row.token_secret)
    assert pump2.url is None and pump2.get_token() == (row.token, row.token_secret)


def test_webpump_api(site: Site, pump: Provider) -> None:
    callback = "http://testserver/oauth/authorize"
    pump1 = WebPump(pump.acct("alice"), client_type="web", client_name="App",
                    callback_uri=callback)
    key, secret, expirey = pump1.get_registration()
    assert key and secret and expirey == 0
    assert secret not in repr(pump1)
    with pytest.warns(DeprecationWarning, match=r"get_registration\(\)"):
        assert pump1.get_registeration() == (key, secret, expirey)
    with pytest.warns(DeprecationWarning, match=r"get_token\(\)"):
        request_token = pump1.get_registrat()
    assert pump1.url is not None and pump1.url.startswith(pump.url)
    answer = httpx.get(pump1.url, follow_redirects=False, timeout=15)
    query = dict(p.split("=", 1) for p in urlsplit(answer.headers["location"]).query.split("&"))
    assert query["oauth_token"] == request_token[0]
    # A fresh instance (another request, another worker) completes it.
    pump2 = WebPump(pump.acct("alice"), client_type="web", client_name="App", key=key,
                    secret=secret, callback_uri=callback)
    pump2.verifier(query["oauth_verifier"])
    token, token_secret = pump2.get_token()
    assert token and token_secret and token != request_token[0]
    assert pump2.url is None
    with pytest.raises(Exception, match="no request token"):
        WebPump(pump.acct("alice"), key=key, secret=secret).verifier("again")


# -- re-encryption and settings ------------------------------------------------------------------

def test_reencrypt_covers_connect_values(site: Site, oauth2: Provider) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    with override_settings(CLARION={**clarion(), "ENCRYPTION_KEYS": [old]}):
        site.connect(oauth2.acct("alice"))
        account = ConnectedAccount.objects.get()
        access = account.access_token
        before = raw("clarion_connect_connectedaccount", "access_token", account.pk)
    with override_settings(CLARION={**clarion(), "ENCRYPTION_KEYS": [new, old]}):
        call_command("clarion_reencrypt", stdout=open(os.devnull, "w"))  # noqa: SIM115
    after = raw("clarion_connect_connectedaccount", "access_token", account.pk)
    assert after != before and after.startswith("enc:v1:")
    assert Fernet(new.encode()).decrypt(after[len("enc:v1:"):].encode()).decode() == access
    client = raw("clarion_connect_serverclient", "client_secret", account.server_id)
    Fernet(new.encode()).decrypt(client[len("enc:v1:"):].encode())
    with override_settings(CLARION={**clarion(), "ENCRYPTION_KEYS": [new]}):
        assert ConnectedAccount.objects.get().access_token == access


def test_reencrypt_check_reports_undecryptable(site: Site, oauth2: Provider) -> None:
    site.connect(oauth2.acct("alice"))
    account = ConnectedAccount.objects.get()
    foreign = "enc:v1:" + Fernet(Fernet.generate_key()).encrypt(b"x").decode()
    with connection.cursor() as cur:
        cur.execute("UPDATE clarion_connect_connectedaccount SET refresh_token = %s", [foreign])
    with pytest.raises(CommandError, match=f"clarion_connect_connectedaccount:{account.pk}"):
        call_command("clarion_reencrypt", "--check", stdout=open(os.devnull, "w"))  # noqa: SIM115
    assert raw("clarion_connect_connectedaccount", "refresh_token", account.pk) == foreign


def test_settings_checks(site: Site) -> None:
    assert not [m for m in check_connect_settings() if m.level >= checks.ERROR]
    for bad in ({"STATE_TTL": 1}, {"ALLOW_HTTP": "yes"}, {"NOPE": 1},
                {"ALLOWED_NETWORKS": "10.0.0.0/8"}, {"SCOPES": {"pump": ["x"]}},
                {"CALLBACK_BASE": "ftp://x"}):
        with override_settings(CLARION={"CONNECT": bad}):
            assert [m.id for m in check_connect_settings()] == ["clarion.E301"], bad
    with override_settings(CLARION={"CONNECT": {"ALLOW_HTTP": True}}, DEBUG=False):
        assert [m.id for m in check_connect_settings()] == ["clarion.W301"]


def test_admin_shows_no_secret(site: Site, oauth2: Provider) -> None:
    site.connect(oauth2.acct("alice"))
    account = ConnectedAccount.objects.get()
    admin = User.objects.create_superuser("root", password="root-pw")
    browser = Site.login(admin)
    secrets = (account.access_token, account.refresh_token, account.server.client_secret)
    for url in ("/admin/clarion_connect/connectedaccount/",
                f"/admin/clarion_connect/connectedaccount/{account.pk}/change/",
                f"/admin/clarion_connect/serverclient/{account.server_id}/change/",
                "/admin/clarion_connect/flowstate/"):
        page = browser.get(url)
        assert page.status_code == 200, url
        if "connectedaccount" in url:
            assert account.handle.encode() in page.content
        for secret in secrets:
            assert secret.encode() not in page.content, url


def test_hooks_registered() -> None:
    for name in ("clarion.account.connected", "clarion.account.disconnected",
                 "clarion.account.token_refreshed"):
        assert name in hooks
