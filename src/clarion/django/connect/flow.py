"""The connection flow: discover the user's server, register this site on it once, send the
user to authorize, and turn the callback into a :class:`ConnectedAccount`.

Django-free protocol work is :mod:`clarion.connect`'s; this module keeps what it needs in the
database (client registrations, flow states, accounts) and sends the signals and hooks. Every
failure is a :class:`~clarion.errors.ConnectError` whose ``reason`` can be shown to the user;
nothing is saved half-way (each write that matters is one transaction).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import secrets
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from django.db import IntegrityError, transaction
from django.urls import reverse

from clarion.connect.actions import Profile, whoami
from clarion.connect.discovery import Server, discover
from clarion.connect.fetch import Fetcher
from clarion.connect.oauth import OAuth1Flow, OAuth2Flow, Tokens, session
from clarion.connect.registration import register
from clarion.errors import AuthorizationError, ConnectError, RevokedError

from . import events, state
from .conf import ConnectSettings, connect_settings
from .models import ConnectedAccount, FlowState, ServerClient

log = logging.getLogger("clarion.connect")


def reason_of(exc: BaseException) -> str:
    """What can be shown to the user about ``exc`` (a ConnectError's ``reason``)."""
    return str(getattr(exc, "reason", "") or exc)


@functools.lru_cache(maxsize=8)
def _ssl_context(verify: bool | str) -> ssl.SSLContext:
    """One context per VERIFY value: loading the CA bundle costs more than many of the requests
    it serves, and a context is safe to share between threads once built."""
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    return httpx.create_ssl_context(verify=verify)


def make_fetcher(conf: ConnectSettings | None = None) -> Fetcher:
    from clarion import __version__

    conf = conf or connect_settings()
    verify = conf.VERIFY
    return Fetcher(conf.policy(), timeout=conf.TIMEOUT, max_bytes=conf.MAX_BYTES,
                   max_redirects=conf.MAX_REDIRECTS, allow_http=conf.ALLOW_HTTP,
                   verify=_ssl_context(verify) if isinstance(verify, bool | str) else verify,
                   user_agent=f"Clarion/{__version__}")


def callback_uri(request: Any | None, conf: ConnectSettings | None = None) -> str:
    """The callback URL servers send users back to: ``CALLBACK_BASE`` + the view's path, or
    the request's own scheme and host."""
    conf = conf or connect_settings()
    path = reverse("clarion_connect:callback")
    if conf.CALLBACK_BASE:
        return str(conf.CALLBACK_BASE + path)
    if request is None:
        raise ConnectError("CLARION['CONNECT']['CALLBACK_BASE'] is unset and there is no "
                           "request to take the site's address from")
    return str(request.build_absolute_uri(path))


# -- the client registration, one per server ---------------------------------------------------

def server_client(server: Server, fetcher: Fetcher, redirect_uri: str, *,
                  conf: ConnectSettings | None = None, client_type: str = "web",
                  client_name: str | None = None,
                  replace: ServerClient | None = None) -> ServerClient:
    """This site's client on ``server``: the stored one, else a new registration. ``replace``
    is a client the server refused (revoked): it is registered again, once, even when several
    requests noticed at the same time."""
    conf = conf or connect_settings()
    endpoints = dataclasses.asdict(server)
    existing: ServerClient | None = ServerClient.objects.filter(
        host=server.host, redirect_uri=redirect_uri).first()
    if existing is not None and replace is not None and existing.client_id != replace.client_id:
        return existing  # another request registered again already
    if existing is not None and replace is None and not existing.is_expired():
        if existing.endpoints != endpoints:  # the server moved its endpoints: follow them
            existing.endpoints = endpoints
            existing.save(update_fields=["endpoints", "updated_at"])
        return existing
    scopes = conf.scopes_for(server.kind, server.scopes_supported) \
        if server.protocol == "oauth2" else ()
    creds = register(server, fetcher, client_name=client_name or conf.CLIENT_NAME,
                     redirect_uris=[redirect_uri], scopes=scopes, website=conf.CLIENT_WEBSITE,
                     client_type=client_type)
    log.info("connect: registered a client on %s (%s)%s", server.host, server.kind,
             " again, the old one was revoked or expired" if existing else "")
    if existing is not None:
        with transaction.atomic():
            row: ServerClient = ServerClient.objects.select_for_update().get(pk=existing.pk)
            if row.client_id != existing.client_id:
                return row  # a concurrent re-registration won; ours is simply unused
            row.set_credentials(creds)
            row.endpoints = endpoints
            row.protocol, row.kind = server.protocol, server.kind
            row.registrations += 1
            row.save()
            return row
    client = ServerClient(host=server.host, redirect_uri=redirect_uri, protocol=server.protocol,
                          kind=server.kind, endpoints=endpoints)
    client.set_credentials(creds)
    try:
        with transaction.atomic():
            client.save()
    except IntegrityError:  # a concurrent first registration won: use it
        winner: ServerClient = ServerClient.objects.get(host=server.host,
                                                        redirect_uri=redirect_uri)
        return winner
    return client


# -- start -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Started:
    url: str             # where to send the user
    flow: FlowState
    server: Server
    acct: str


def start(request: Any, identifier: str, *, next_url: str = "") -> Started:
    """Discover ``identifier``'s server, register if needed, keep the state, and return the
    server's authorization URL."""
    conf = connect_settings()
    redirect_uri = callback_uri(request, conf)
    # Before any request goes out: the cap bounds the rows and the servers' load per user.
    state.check_open(request.user if getattr(request.user, "is_authenticated", False) else None)
    fetcher = make_fetcher(conf)
    try:
        server, acct = discover(identifier, fetcher)
        client = server_client(server, fetcher, redirect_uri, conf=conf)
        try:
            url, key, secret = _authorize(server, client, fetcher, redirect_uri, conf)
        except RevokedError:
            # The server no longer knows our client (OAuth 1: the request-token call says
            # so): register again, once, and retry.
            log.warning("connect: %s refused this site's client %s; registering again",
                        server.host, client.client_id)
            client = server_client(server, fetcher, redirect_uri, conf=conf, replace=client)
            url, key, secret = _authorize(server, client, fetcher, redirect_uri, conf)
        user = request.user if getattr(request.user, "is_authenticated", False) else None
        with transaction.atomic():
            flow = state.create(
                key, request=request, ttl=conf.STATE_TTL, user=user, client=client, acct=acct,
                redirect_uri=redirect_uri, next_url=next_url,
                request_token=key if server.protocol == "oauth1" else "", secret=secret)
    finally:
        fetcher.close()
    log.info("connect: %s sent to %s to authorize", acct, server.host)
    return Started(url, flow, server, acct)


def _authorize(server: Server, client: ServerClient, fetcher: Fetcher, redirect_uri: str,
               conf: ConnectSettings) -> tuple[str, str, str]:
    """(authorization URL, the state's key, its secret: request-token secret or PKCE
    verifier)."""
    if server.protocol == "oauth1":
        url, token, token_secret = OAuth1Flow(server, client.credentials(), fetcher).start(
            redirect_uri)
        return url, token, token_secret
    scope = " ".join(conf.scopes_for(server.kind, server.scopes_supported))
    oauth2 = OAuth2Flow(server, client.credentials(), fetcher)
    _probe_client(oauth2, redirect_uri)
    url, oauth_state, verifier = oauth2.start(redirect_uri, scope)
    return url, oauth_state, verifier


def _probe_client(oauth2: OAuth2Flow, redirect_uri: str) -> None:
    """Raise RevokedError if the server no longer knows our OAuth 2 client.

    A server shows its own error page for an unknown ``client_id`` at the authorization
    endpoint and never sends the user back, so the site must find out before sending the user
    there. A token request with a code that cannot exist does it with no side effect: the
    server authenticates the client first (RFC 6749 §5.2), answering ``invalid_client`` for a
    revoked one and ``invalid_grant`` for a good one. Any answer but ``invalid_client`` is left
    to the real exchange to report."""
    try:
        oauth2.finish(f"clarion-probe-{secrets.token_urlsafe(16)}", secrets.token_urlsafe(48),
                      redirect_uri)
    except RevokedError:
        raise
    except ConnectError as exc:
        # Expected (invalid_grant: the client is known); anything else is the exchange's to
        # report, but the operator sees what the probe got.
        reason = reason_of(exc)
        log.log(logging.DEBUG if "invalid_grant" in reason else logging.INFO,
                "connect: the client probe on %s got: %s", oauth2.server.host, reason)
        return


# -- the callback ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Finished:
    account: ConnectedAccount | None   # None: paused for the email check
    flow: FlowState
    created: bool = False


class ClientRevoked(ConnectError):
    """The server refused this site's client while finishing; it was registered again and the
    user must start over (the authorization was made for the old client)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def finish(request: Any, params: Any) -> Finished:
    """Complete the flow the callback's ``params`` (``request.GET``) name."""
    oauth1 = "oauth_token" in params or "oauth_verifier" in params
    key = params.get("oauth_token") if oauth1 else params.get("state")
    if not key and params.get("error") == "access_denied":
        # An OAuth 1 server's refusal may name no request token (authlib's does not): there is
        # no state to spend, and it expires unused.
        raise AuthorizationError("You did not authorize this site; nothing was connected.")
    flow = state.consume(key, request=request)
    if flow.user_id is not None and getattr(request.user, "pk", None) != flow.user_id:
        raise state.StateError("This connection attempt was started by another user of this "
                               "site. Sign in as that user, or start again.", status=403)
    client = flow.client
    server = client.server()
    denied = params.get("error") or params.get("denied") or \
        (oauth1 and not params.get("oauth_verifier"))
    if denied:
        error = params.get("error", "")
        # The server's words, as repr: a CR/LF in them cannot forge a log line.
        shown = repr(error[:100]) if isinstance(error, str) else "''"
        log.info("connect: %s: authorization refused on %s (%s)", flow.acct, server.host, shown)
        if error and error != "access_denied":
            raise AuthorizationError(f"{server.host} did not authorize this site ({shown}).")
        raise AuthorizationError(f"You did not authorize this site on {server.host}; nothing "
                                 "was connected.")
    fetcher = make_fetcher()
    try:
        try:
            if oauth1:
                tokens = OAuth1Flow(server, client.credentials(), fetcher).finish(
                    flow.request_token, flow.secret, params.get("oauth_verifier", ""))
            else:
                code = params.get("code")
                if not code:
                    raise AuthorizationError(f"{server.host} sent no authorization code back.")
                tokens = OAuth2Flow(server, client.credentials(), fetcher).finish(
                    code, flow.secret, flow.redirect_uri)
        except RevokedError:
            log.warning("connect: %s refused this site's client %s at the token exchange; "
                        "registering again", server.host, client.client_id)
            server_client(server, fetcher, flow.redirect_uri, replace=client)
            raise ClientRevoked(f"{server.host} no longer knew this site, which has now "
                                "registered again. Please connect once more.") from None
        # A token that lives less than authlib's refresh leeway is refreshed by this very
        # whoami, and a rotating server has then spent the first refresh token: keep the
        # newest tokens, not the ones the exchange gave.
        latest = [tokens]
        with session(server, client.credentials(), tokens, fetcher,
                     on_refresh=latest.append) as http:
            profile = whoami(server, http)
        tokens = latest[-1]
    finally:
        fetcher.close()
    user = flow.user if flow.user_id is not None else None
    if user is None:
        raise AuthorizationError("You are not signed in to this site any more; sign in and "
                                 "connect again.")
    if connect_settings().REQUIRE_EMAIL and not (profile.email and profile.email_verified):
        pause(flow, tokens, profile)
        return Finished(None, flow)
    account, created = save_account(flow, tokens, profile)
    return Finished(account, flow, created)


def handle_of(acct: str, profile: Profile, host: str) -> str:
    """``alice@pump.example`` as the server vouched for it: the signed-in user's name (whoami)
    at the server's host. What the user typed (``acct``) is only a claim: someone who types
    ``victim@server`` and signs in there as themselves must get their own handle, not the
    victim's."""
    handle = profile.handle if "@" in profile.handle else f"{profile.handle}@{host}"
    typed = acct.removeprefix("acct:").lstrip("@")
    if "@" in typed and "/" not in typed and typed.lower() != handle.lower():
        log.warning("connect: %r was typed but the server signed in %r; the account is stored "
                    "as %r", typed[:320], handle, handle)
    return handle


def save_account(flow: FlowState, tokens: Tokens, profile: Profile, *,
                 email: str = "") -> tuple[ConnectedAccount, bool]:
    """Create or update the account, and send ``account_connected``, in one transaction."""
    client = flow.client
    handle = handle_of(flow.acct, profile, client.host)
    with transaction.atomic():
        account = (ConnectedAccount.objects.select_for_update()
                   .filter(user_id=flow.user_id, server=client, handle=handle).first())
        created = account is None
        if account is None:
            account = ConnectedAccount(user_id=flow.user_id, server=client, handle=handle)
        account.set_tokens(tokens)
        account.set_profile(profile)
        if email:
            account.email, account.email_verified = email, True
        account.save()
        events.connected(account, created=created)
    log.info("connect: user %s connected %s (%s)", flow.user_id, handle,
             "new" if created else "tokens renewed")
    return account, created


# -- pausing for the email check (the partial pipeline) ----------------------------------------

def pause(flow: FlowState, tokens: Tokens, profile: Profile) -> None:
    """Keep what the server gave, encrypted in the flow's row, until the email is confirmed;
    no account exists meanwhile."""
    conf = connect_settings()
    data = {"tokens": dataclasses.asdict(tokens), "profile": dataclasses.asdict(profile)}
    FlowState.objects.filter(pk=flow.pk).update(
        stage="email", paused=json.dumps(data), consumed_at=None,
        expires_at=datetime.now(UTC) + _seconds(conf.EMAIL_TTL),
        email_nonce=secrets.token_urlsafe(16))
    flow.refresh_from_db()
    log.info("connect: %s paused until an email address is confirmed", flow.acct)


def resume(flow: FlowState, email: str) -> tuple[ConnectedAccount, bool]:
    """Finish a paused flow with a confirmed ``email``."""
    data = flow.paused_data()
    tokens = Tokens(**data["tokens"])
    profile = Profile(**data["profile"])
    return save_account(flow, tokens, profile, email=email)


def _seconds(value: float) -> Any:
    from datetime import timedelta

    return timedelta(seconds=value)


# -- disconnect --------------------------------------------------------------------------------

def disconnect(account: ConnectedAccount) -> None:
    """Delete the account and send ``account_disconnected``, in one transaction. (The tokens
    are not revoked on the server: pump.io has no revocation endpoint, and a failed revocation
    must not keep the user connected here.)"""
    with transaction.atomic():
        pk = account.pk
        account.delete()
        account.pk = pk
        events.disconnected(account)
    log.info("connect: user %s disconnected %s", account.user_id, account.handle)
