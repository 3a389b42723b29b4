"""The user's authorization: OAuth 1.0a (pump.io) and OAuth 2 with PKCE (everything else).

authlib does the protocol (signing, PKCE S256, token parsing, refresh) on httpx clients built
on the :class:`~clarion.connect.fetch.Fetcher`'s pinned transport, so every token request goes
through the address policy and the size and time limits too. Nothing here keeps state between
the two halves of a flow: :meth:`start` returns what :meth:`finish` needs (request token and
secret, or state and code verifier), and the caller stores it (the Django app, server-side,
single-use, expiring), so the callback completes on any process, after a restart.

authlib's errors are translated here: the user's refusal or a bad verifier is an
:class:`AuthorizationError`, a failing token endpoint an :class:`OAuthTokenError`, a revoked
client or token a :class:`RevokedError` (``client_revoked`` tells the Django app to register
again).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from authlib.common.errors import AuthlibBaseError
from authlib.common.security import generate_token
from authlib.integrations.httpx_client import OAuth1Client, OAuth2Client

from clarion.connect.discovery import Server
from clarion.connect.fetch import Fetcher, show_url
from clarion.connect.registration import ClientCredentials
from clarion.errors import (
    AuthorizationError,
    ConnectError,
    OAuthTokenError,
    RevokedError,
)

__all__ = ["OAuth1Flow", "OAuth2Flow", "Tokens", "session"]

log = logging.getLogger("clarion.connect")

# RFC 7636: 43 to 128 characters; authlib's generate_token draws from [A-Za-z0-9].
_VERIFIER_LENGTH = 64
_STATE_LENGTH = 32


@dataclass(frozen=True)
class Tokens:
    """An account's tokens. Secrets: store them encrypted, never log them (``repr`` hides)."""

    access_token: str
    token_secret: str = ""  # OAuth 1.0a
    refresh_token: str = ""
    expires_at: int | None = None  # epoch seconds; None: no expiry known
    scope: str = ""

    def __repr__(self) -> str:
        return (f"Tokens(access_token='***', refresh_token={'***' if self.refresh_token else ''!r}"
                f", expires_at={self.expires_at!r}, scope={self.scope!r})")


def _oauth2_tokens(token: dict[str, Any], previous_refresh: str = "") -> Tokens:
    access = token.get("access_token")
    if not isinstance(access, str) or not access:
        raise OAuthTokenError("the token endpoint's answer has no access_token")
    refresh = token.get("refresh_token") or previous_refresh
    expires = token.get("expires_at")
    scope = token.get("scope", "")
    return Tokens(
        access_token=access,
        refresh_token=refresh if isinstance(refresh, str) else "",
        expires_at=int(expires) if isinstance(expires, int | float) and expires else None,
        scope=" ".join(scope) if isinstance(scope, list) else str(scope or ""),
    )


def _without_body(text: str) -> str:
    """authlib quotes the server's whole answer in some messages ("…, response was '<html>…'",
    "… The response was '…'"): a user's error page must not show a server's page, and the
    answer to a token request could hold a token. Keep what comes before the quote."""
    cut = text.lower().find("response was")
    if cut >= 0:
        text = text[:cut].rstrip(" ,.")
        if text.endswith(" The"):
            text = text[:-4].rstrip(" ,.")
    return text[:200]


def _describe(exc: AuthlibBaseError) -> tuple[str, str]:
    error = str(getattr(exc, "error", "") or "")
    description = str(getattr(exc, "description", "") or "")
    return error, _without_body(description)


@contextmanager
def _translated(server: Server, step: str, *, refreshing: bool = False) -> Iterator[None]:
    """authlib's and httpx's errors of one step of a flow as Clarion's."""
    try:
        yield
    except ConnectError:
        raise
    except AuthlibBaseError as exc:
        error, description = _describe(exc)
        what = f"{server.host} refused the {step}: {error}" + (
            f" ({description})" if description else "")
        if error == "invalid_client":
            raise RevokedError(what, client_revoked=True) from None
        # unauthorized_client is not a revocation (RFC 6749 §5.2): the client is known but may
        # not use this grant type; registering again would not change that.
        if error == "invalid_grant":
            if refreshing:
                raise RevokedError(what) from None
            raise OAuthTokenError(what) from None
        if refreshing and error in ("token_invalid", "token_expired", "missing_token"):
            # authlib: the access token expired and there is no refresh token to renew it.
            raise RevokedError(f"the account's token on {server.host} expired and cannot be "
                               f"refreshed; connect the account again") from None
        if error in ("access_denied", "missing_verifier"):
            raise AuthorizationError(what) from None
        raise OAuthTokenError(what) from None
    except httpx.HTTPStatusError as exc:
        raise OAuthTokenError(
            f"{server.host}: the {step} failed with {exc.response.status_code} at "
            f"{show_url(exc.request.url)}") from None
    except httpx.HTTPError as exc:
        raise OAuthTokenError(f"{server.host}: the {step} failed ({type(exc).__name__}: "
                              f"{exc})") from None
    except ValueError as exc:  # authlib: "Token endpoint response is not a JSON object"
        raise OAuthTokenError(f"{server.host}: the {step} answered garbage "
                              f"({_without_body(str(exc))})") from None


class OAuth1Flow:
    """OAuth 1.0a (RFC 5849) as pump.io speaks it: request token with the callback, the user
    authorizes at ``authorize_url``, access token with the ``oauth_verifier`` the callback got
    (pump.io calls back with ``oauth_token`` and ``oauth_verifier``)."""

    def __init__(self, server: Server, creds: ClientCredentials, fetcher: Fetcher) -> None:
        if server.protocol != "oauth1":
            raise ValueError(f"{server.host} speaks {server.protocol}, not OAuth 1.0a")
        self.server, self.creds, self.fetcher = server, creds, fetcher

    def _client(self, statuses: list[int], **kwargs: Any) -> Any:
        # authlib reports a failed token request without its status; the hook keeps it.
        hooks = {"response": [lambda response: statuses.append(response.status_code)]}
        return OAuth1Client(self.creds.client_id, self.creds.client_secret, **kwargs,
                            **self.fetcher.client_kwargs(event_hooks=hooks))

    def start(self, callback_uri: str) -> tuple[str, str, str]:
        """``(authorize URL, request token, request token secret)``."""
        statuses: list[int] = []
        with self._client(statuses, redirect_uri=callback_uri) as client:
            try:
                with _translated(self.server, "request token"):
                    token = client.fetch_request_token(self.server.request_token_url)
            except OAuthTokenError as exc:
                # The consumer key is unknown: revoked, or the server lost its registrations
                # (pump.io and authlib answer 401, pump.io 400 "Invalid consumer" too).
                if statuses and (statuses[-1] == 401 or (
                        statuses[-1] == 400 and "consumer" in exc.reason.lower())):
                    raise RevokedError(
                        f"{self.server.host} no longer knows this client (its registration "
                        f"was revoked); register again", client_revoked=True) from None
                raise
            request_token = token.get("oauth_token")
            secret = token.get("oauth_token_secret")
            if not isinstance(request_token, str) or not request_token or not isinstance(
                    secret, str):
                raise OAuthTokenError(f"{self.server.host}: the request token answer has no "
                                      f"oauth_token and oauth_token_secret")
            # The callback went with the request token (OAuth 1.0a); not repeated in the URL.
            client.redirect_uri = None
            url = client.create_authorization_url(self.server.authorize_url, request_token)
        return url, request_token, secret

    def finish(self, request_token: str, request_token_secret: str, verifier: str) -> Tokens:
        """Exchange the authorized request token and the callback's verifier."""
        if not verifier:
            raise AuthorizationError("the server's callback carried no oauth_verifier")
        statuses: list[int] = []
        with self._client(statuses, token=request_token,
                          token_secret=request_token_secret) as client:
            try:
                with _translated(self.server, "access token"):
                    token = client.fetch_access_token(self.server.access_token_url,
                                                      verifier=verifier)
            except OAuthTokenError:
                if statuses and statuses[-1] in (400, 401):
                    # pump.io: "Wrong verifier", "Token has been used", an unknown token.
                    raise AuthorizationError(
                        f"{self.server.host} refused the verifier or the request token "
                        f"(wrong, expired, already used or not authorized)") from None
                raise
        access, secret = token.get("oauth_token"), token.get("oauth_token_secret")
        if not isinstance(access, str) or not access or not isinstance(secret, str):
            raise OAuthTokenError(f"{self.server.host}: the access token answer has no "
                                  f"oauth_token and oauth_token_secret")
        return Tokens(access_token=access, token_secret=secret)


def _auth_method(creds: ClientCredentials) -> str:
    return "client_secret_basic" if creds.client_secret else "none"


class OAuth2Flow:
    """OAuth 2 authorization code with PKCE (S256, always: servers that ignore it lose
    nothing) and a random ``state``; refresh with the refresh token."""

    def __init__(self, server: Server, creds: ClientCredentials, fetcher: Fetcher) -> None:
        if server.protocol != "oauth2":
            raise ValueError(f"{server.host} speaks {server.protocol}, not OAuth 2")
        self.server, self.creds, self.fetcher = server, creds, fetcher

    def _client(self, **kwargs: Any) -> Any:
        return OAuth2Client(
            self.creds.client_id, self.creds.client_secret,
            token_endpoint_auth_method=_auth_method(self.creds),
            code_challenge_method="S256", **kwargs, **self.fetcher.client_kwargs())

    def start(self, redirect_uri: str, scope: str) -> tuple[str, str, str]:
        """``(authorize URL, state, code verifier)``; no request is made."""
        verifier = generate_token(_VERIFIER_LENGTH)
        with self._client(redirect_uri=redirect_uri, scope=scope or None) as client:
            url, state = client.create_authorization_url(
                self.server.authorization_endpoint, state=generate_token(_STATE_LENGTH),
                code_verifier=verifier)
        return url, state, verifier

    def finish(self, code: str, code_verifier: str, redirect_uri: str) -> Tokens:
        """Exchange the callback's ``code`` (the caller has checked ``state``)."""
        if not code:
            raise AuthorizationError("the server's callback carried no code")
        with self._client(redirect_uri=redirect_uri) as client, _translated(
                self.server, "authorization code"):
            token = client.fetch_token(
                self.server.token_endpoint, grant_type="authorization_code", code=code,
                code_verifier=code_verifier, redirect_uri=redirect_uri)
            return _oauth2_tokens(dict(token))

    def refresh(self, refresh_token: str) -> Tokens:
        """New tokens; :class:`RevokedError` if the refresh token is no longer valid."""
        if not refresh_token:
            raise RevokedError(f"{self.server.host}: no refresh token; connect again")
        with self._client() as client, _translated(self.server, "token refresh",
                                                   refreshing=True):
            token = client.refresh_token(self.server.token_endpoint,
                                         refresh_token=refresh_token)
            return _oauth2_tokens(dict(token), refresh_token)


def _revoked_on_401(server: Server) -> Callable[[httpx.Response], None]:
    # authlib's own token requests (a refresh) are left to _translated: their 401 is the
    # server's verdict on the client (invalid_client) or the grant, not on the account's token.
    token_urls = {show_url(u) for u in (server.token_endpoint, server.request_token_url,
                                        server.access_token_url) if u}

    def check(response: httpx.Response) -> None:
        if response.status_code == 401 and show_url(response.request.url) not in token_urls:
            raise RevokedError(
                f"{server.host} refused the account's token at "
                f"{show_url(response.request.url)} (401): it was revoked or expired; "
                f"connect the account again")
    return check


class _OAuth2Session(OAuth2Client):  # type: ignore[misc]  # authlib is untyped
    """authlib's client, its automatic refresh's errors translated (and only those: a failed
    request of the caller's stays httpx's error, for the caller to translate)."""

    clarion_server: Server

    def request(self, method: str, url: Any, withhold_token: bool = False,
                auth: Any = httpx.USE_CLIENT_DEFAULT, **kwargs: Any) -> Any:
        # authlib's own condition: its token requests carry the client's auth and are left be.
        if not withhold_token and auth is httpx.USE_CLIENT_DEFAULT and self.token:
            with _translated(self.clarion_server, "token refresh", refreshing=True):
                self.ensure_active_token(self.token)
        try:
            return super().request(method, url, withhold_token=withhold_token, auth=auth,
                                   **kwargs)
        except AuthlibBaseError:
            with _translated(self.clarion_server, "token refresh", refreshing=True):
                raise


def session(server: Server, creds: ClientCredentials, tokens: Tokens, fetcher: Fetcher, *,
            on_refresh: Callable[[Tokens], None] | None = None) -> httpx.Client:
    """An httpx client that acts for the user: authlib's ``OAuth1Client`` (signs every request)
    or ``OAuth2Client`` (sends the bearer token and refreshes it when it expires, calling
    ``on_refresh`` with the new tokens so they can be stored). A 401 raises
    :class:`RevokedError`. Use it as a context manager, or close it."""
    hooks = {"response": [_revoked_on_401(server)]}
    if server.protocol == "oauth1":
        client: httpx.Client = OAuth1Client(
            creds.client_id, creds.client_secret, token=tokens.access_token,
            token_secret=tokens.token_secret,
            # Without it authlib drops a JSON body (a pump.io activity): only form bodies take
            # part in an OAuth 1 signature, the others are sent unsigned as they are.
            force_include_body=True,
            **fetcher.client_kwargs(event_hooks=hooks))
        return client

    def updated(token: dict[str, Any], refresh_token: str | None = None,
                access_token: str | None = None) -> None:
        new = _oauth2_tokens(dict(token), refresh_token or tokens.refresh_token)
        log.info("refreshed the token for an account on %s", server.host)
        if on_refresh is not None:
            on_refresh(new)

    token: dict[str, Any] = {"access_token": tokens.access_token, "token_type": "Bearer"}
    if tokens.refresh_token:
        token["refresh_token"] = tokens.refresh_token
    if tokens.expires_at is not None:
        token["expires_at"] = tokens.expires_at
    if tokens.scope:
        token["scope"] = tokens.scope
    oauth2 = _OAuth2Session(
        creds.client_id, creds.client_secret,
        token_endpoint_auth_method=_auth_method(creds), token=token,
        token_endpoint=server.token_endpoint, update_token=updated,
        **fetcher.client_kwargs(event_hooks=hooks))
    oauth2.clarion_server = server
    result: httpx.Client = oauth2
    return result
