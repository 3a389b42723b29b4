"""``WebPump``: PyPump 0.3's web API, on :mod:`clarion.connect`.

    pump = WebPump("alice@pump.example", client_type="web", client_name="DjangoApp",
                   callback_uri="https://my.site/oauth/authorize")
    key, secret, expirey = pump.get_registration()   # the client, registered once per server
    token, token_secret = pump.get_token()           # the request token, until verified
    return redirect(pump.url)                        # None once the user is authorized
    ...
    pump = WebPump("alice@pump.example", client_type="web", client_name="DjangoApp",
                   key=key, secret=secret, callback_uri=...)
    pump.verifier(request.GET["oauth_verifier"])
    token, token_secret = pump.get_token()           # the access token now

What changed from PyPump, so that the seed's two-view flow completes: the server is found with
WebFinger (not assumed to be the text after ``@``); the request token and its secret are kept
server-side (encrypted, single-use, expiring with ``STATE_TTL``) instead of in the instance, so
the callback view's fresh ``WebPump`` finds them on any worker; registration sends the
``redirect_uris`` pump.io reads. Differences a caller can see: ``url`` is ``None`` once an
access token is known (as the seed's docs promised), and the misspelt ``get_registeration`` and
``get_registrat`` of the seed's example work with a ``DeprecationWarning`` naming the right call.
"""

from __future__ import annotations

import logging
import warnings
from datetime import UTC, datetime
from typing import Any

from django.db import transaction

from clarion.connect.discovery import discover
from clarion.connect.oauth import OAuth1Flow
from clarion.connect.registration import ClientCredentials
from clarion.errors import DiscoveryError, RevokedError

from . import state
from .conf import connect_settings
from .flow import make_fetcher, server_client
from .models import FlowState, ServerClient, datetime_to_epoch

log = logging.getLogger("clarion.connect")
_STAGE = "webpump"


class WebPump:
    """One user's pump.io connection in a web application (see the module docstring)."""

    def __init__(self, webfinger: str, client_type: str = "web", client_name: str = "",
                 key: str | None = None, secret: str | None = None, token: str | None = None,
                 token_secret: str | None = None, callback_uri: str = "oob",
                 verifier_callback: Any = None, **ignored: Any) -> None:
        # verifier_callback is PyPump's interactive hook; a web view has none (as in PyPump's
        # WebPump, it is ignored). Other PyPump keywords (verify, retries, …) are too.
        self.webfinger = webfinger
        self.client_type = client_type
        self.client_name = client_name or connect_settings().CLIENT_NAME
        self.callback_uri = callback_uri
        self._fetcher = make_fetcher()
        try:
            self.server, self.acct = discover(webfinger, self._fetcher)
        except BaseException:
            self._fetcher.close()
            raise
        if self.server.protocol != "oauth1":
            self._fetcher.close()
            raise DiscoveryError(
                f"{self.server.host} is a {self.server.kind} server, not pump.io: WebPump "
                "speaks pump.io's OAuth 1.0a; connect it with clarion.django.connect's views")
        self._client: ServerClient | None = None
        if key and secret:
            self.key, self.secret, self.expirey = key, secret, 0
        else:
            self._client = server_client(self.server, self._fetcher, callback_uri,
                                         client_type=client_type, client_name=self.client_name)
            self.key, self.secret = self._client.client_id, self._client.client_secret
            self.expirey = datetime_to_epoch(self._client.expires_at) or 0
        self.token = token
        self.token_secret = token_secret
        # Given both tokens, they are the access token (PyPump's meaning); the request token
        # is then never fetched.
        self._authorized = bool(token and token_secret)
        self._url: str | None = None

    def __repr__(self) -> str:  # never a secret or token
        return f"<WebPump {self.webfinger!r} key={self.key!r}>"

    def close(self) -> None:
        self._fetcher.close()

    def __del__(self) -> None:
        fetcher = getattr(self, "_fetcher", None)
        if fetcher is not None:
            fetcher.close()

    # -- PyPump's getters ------------------------------------------------------------------

    def get_registration(self) -> tuple[str, str, int]:
        """``(key, secret, expirey)`` of this site's client on the server (0: never
        expires)."""
        return self.key, self.secret, self.expirey

    def get_token(self) -> tuple[str | None, str | None]:
        """``(token, token_secret)``: the access token once verified, else the request token
        (fetched now if needed)."""
        if not self._authorized:
            self._request_token()
        return self.token, self.token_secret

    @property
    def url(self) -> str | None:
        """Where to send the user to authorize this site; ``None`` once authorized."""
        if self._authorized:
            return None
        self._request_token()
        return self._url

    def get_registeration(self) -> tuple[str, str, int]:
        warnings.warn("WebPump.get_registeration() is a misspelling kept from the seed's "
                      "example; call get_registration()", DeprecationWarning, stacklevel=2)
        return self.get_registration()

    def get_registrat(self) -> tuple[str | None, str | None]:
        warnings.warn("WebPump.get_registrat() is a misspelling kept from the seed's example "
                      "(it returns the tokens); call get_token()", DeprecationWarning,
                      stacklevel=2)
        return self.get_token()

    # -- the handshake -----------------------------------------------------------------------

    def _credentials(self) -> ClientCredentials:
        return ClientCredentials(client_id=self.key, client_secret=self.secret,
                                 expires_at=self.expirey or None)

    def _stored_client(self) -> ServerClient:
        """The ServerClient row the flow state hangs on (one for credentials given by the
        caller too, so that the state has a client to name)."""
        if self._client is None:
            row = ServerClient.objects.filter(host=self.server.host, client_id=self.key).first()
            if row is None:
                import dataclasses

                row, _ = ServerClient.objects.get_or_create(
                    host=self.server.host, redirect_uri=self.callback_uri,
                    defaults={"protocol": "oauth1", "kind": self.server.kind,
                              "endpoints": dataclasses.asdict(self.server),
                              "client_id": self.key, "client_secret": self.secret})
            self._client = row
        return self._client

    def _request_token(self) -> None:
        if self.token is not None and self._url is not None:
            return
        flow = OAuth1Flow(self.server, self._credentials(), self._fetcher)
        try:
            url, token, token_secret = flow.start(self.callback_uri)
        except RevokedError:
            if self._client is None:
                raise  # the caller's own credentials: it must register again itself
            log.warning("connect: %s refused WebPump's client %s; registering again",
                        self.server.host, self.key)
            self._client = server_client(self.server, self._fetcher, self.callback_uri,
                                         client_type=self.client_type,
                                         client_name=self.client_name, replace=self._client)
            self.key, self.secret = self._client.client_id, self._client.client_secret
            self.expirey = datetime_to_epoch(self._client.expires_at) or 0
            flow = OAuth1Flow(self.server, self._credentials(), self._fetcher)
            url, token, token_secret = flow.start(self.callback_uri)
        with transaction.atomic():
            state.create(token, request=None, ttl=connect_settings().STATE_TTL, stage=_STAGE,
                         client=self._stored_client(), acct=self.acct,
                         redirect_uri=self.callback_uri, request_token=token,
                         secret=token_secret)
        self.token, self.token_secret, self._url = token, token_secret, url

    def verifier(self, verifier: str, token: str | None = None) -> None:
        """Exchange the ``oauth_verifier`` the server sent to the callback for the access
        token. ``token`` is the callback's ``oauth_token``; without it, the request token is
        this instance's, else the newest one waiting for this webfinger."""
        key = token or (self.token if not self._authorized and self._url else None)
        if key is not None:
            flow = state.consume(key, request=None, stage=_STAGE)
        else:
            flow = self._newest_waiting()
        tokens = OAuth1Flow(self.server, self._credentials(), self._fetcher).finish(
            flow.request_token, flow.secret, verifier)
        self.token, self.token_secret = tokens.access_token, tokens.token_secret
        self._authorized, self._url = True, None
        log.info("connect: WebPump authorized %s", self.acct)

    def _newest_waiting(self) -> FlowState:
        now = datetime.now(UTC)
        with transaction.atomic():
            flow: FlowState | None = (FlowState.objects.select_for_update()
                    .filter(stage=_STAGE, acct=self.acct, client__host=self.server.host,
                            client__client_id=self.key, consumed_at__isnull=True,
                            expires_at__gt=now)
                    .order_by("-created_at").first())
            if flow is None:
                raise state.StateError(f"no request token of {self.webfinger} is waiting for a "
                                       "verifier (it expired, was used, or was never fetched)")
            flow.consumed_at = now
            flow.save(update_fields=["consumed_at"])
        return flow
