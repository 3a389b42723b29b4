"""What ``clarion.django.connect`` stores: one registered client per server, the accounts users
connected, and the flows in progress.

Every secret (client secrets, access/refresh tokens, token secrets, PKCE verifiers, OAuth 1
request-token secrets) is stored encrypted (``enc:v1:`` Fernet tokens,
:mod:`clarion.django.encryption`), is left out of ``repr`` and of the admin, and is never
logged. Model instances hold the plain values.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import models

from clarion.django.encryption import EncryptedSecretField

if TYPE_CHECKING:
    import httpx

    from clarion.connect.actions import Profile
    from clarion.connect.discovery import Server
    from clarion.connect.oauth import Tokens
    from clarion.connect.registration import ClientCredentials

TOKEN_MAX = 8192  # the stored (encrypted) form: Fernet adds a third plus ~100 bytes


def epoch_to_datetime(value: int | None) -> datetime | None:
    return None if not value else datetime.fromtimestamp(value, UTC)


def datetime_to_epoch(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


class ServerClient(models.Model):  # type: ignore[misc]
    """This site's client registration on one server (pump.io ``client_associate``, Mastodon
    ``/api/v1/apps``, RFC 7591), made once and reused for every user of that server, and made
    again when the server revokes it."""

    PROTOCOLS = [("oauth1", "OAuth 1.0a"), ("oauth2", "OAuth 2")]
    KINDS = [("pump", "pump.io"), ("mastodon", "Mastodon"), ("oauth2", "OAuth 2 server")]

    host = models.CharField(max_length=255)
    redirect_uri = models.CharField(max_length=1000)
    protocol = models.CharField(max_length=10, choices=PROTOCOLS)
    kind = models.CharField(max_length=10, choices=KINDS)
    endpoints = models.JSONField(default=dict)  # the discovered Server, as a dict
    client_id = models.CharField(max_length=1000)
    client_secret: str = EncryptedSecretField(max_length=TOKEN_MAX, blank=True, default="")
    registration_access_token: str = EncryptedSecretField(max_length=TOKEN_MAX, blank=True,
                                                     default="")
    registration_client_uri = models.CharField(max_length=1000, blank=True, default="")
    expires_at = models.DateTimeField(null=True, blank=True)
    registrations = models.PositiveIntegerField(default=1)  # 2 and more: re-registered
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        app_label = "clarion_connect"
        verbose_name = "server client"
        constraints = [models.UniqueConstraint(fields=["host", "redirect_uri"],
                                               name="clarion_connect_client_unique")]

    def __str__(self) -> str:
        return f"{self.host} ({self.get_kind_display()})"

    def __repr__(self) -> str:  # never the secret
        return f"<ServerClient {self.host!r} client_id={self.client_id!r}>"

    def server(self) -> Server:
        from clarion.connect.discovery import Server

        data = dict(self.endpoints)
        for name in ("scopes_supported", "code_challenge_methods"):
            data[name] = tuple(data.get(name) or ())
        known = {f.name for f in dataclasses.fields(Server)}
        return Server(**{k: v for k, v in data.items() if k in known})

    def credentials(self) -> ClientCredentials:
        from clarion.connect.registration import ClientCredentials

        return ClientCredentials(
            client_id=self.client_id, client_secret=self.client_secret,
            expires_at=datetime_to_epoch(self.expires_at),
            registration_access_token=self.registration_access_token,
            registration_client_uri=self.registration_client_uri)

    def set_credentials(self, creds: ClientCredentials) -> None:
        self.client_id = creds.client_id
        self.client_secret = creds.client_secret
        self.expires_at = epoch_to_datetime(creds.expires_at)
        self.registration_access_token = creds.registration_access_token
        self.registration_client_uri = creds.registration_client_uri

    def is_expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or datetime.now(UTC))


class ConnectedAccount(models.Model):  # type: ignore[misc]
    """A user's account on a server, connected to this site, and the tokens to act for it."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                             related_name="connected_accounts")
    server = models.ForeignKey(ServerClient, on_delete=models.PROTECT,
                               related_name="accounts")
    handle = models.CharField(max_length=320)  # "alice@pump.example"
    profile_id = models.CharField(max_length=1000, blank=True, default="")
    display_name = models.CharField(max_length=255, blank=True, default="")
    profile_url = models.CharField(max_length=1000, blank=True, default="")
    email = models.EmailField(blank=True, default="")
    email_verified = models.BooleanField(default=False)
    scopes = models.CharField(max_length=1000, blank=True, default="")
    access_token: str = EncryptedSecretField(max_length=TOKEN_MAX)
    token_secret: str = EncryptedSecretField(max_length=TOKEN_MAX, blank=True, default="")
    refresh_token: str = EncryptedSecretField(max_length=TOKEN_MAX, blank=True, default="")
    expires_at = models.DateTimeField(null=True, blank=True)
    # Set when the server refused the tokens (revoked): the user must connect again.
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        app_label = "clarion_connect"
        verbose_name = "connected account"
        ordering = ["handle", "id"]
        constraints = [models.UniqueConstraint(fields=["user", "server", "handle"],
                                               name="clarion_connect_account_unique")]

    def __str__(self) -> str:
        return str(self.handle)

    def __repr__(self) -> str:  # never a token
        return f"<ConnectedAccount {self.handle!r} user_id={self.user_id!r}>"

    @property
    def needs_reconnect(self) -> bool:
        return self.revoked_at is not None

    def tokens(self) -> Tokens:
        from clarion.connect.oauth import Tokens

        return Tokens(access_token=self.access_token, token_secret=self.token_secret,
                      refresh_token=self.refresh_token,
                      expires_at=datetime_to_epoch(self.expires_at), scope=self.scopes)

    def set_tokens(self, tokens: Tokens) -> None:
        self.access_token = tokens.access_token
        self.token_secret = tokens.token_secret
        # A refresh answer without a refresh token keeps the old one (RFC 6749 §6).
        self.refresh_token = tokens.refresh_token or self.refresh_token
        self.expires_at = epoch_to_datetime(tokens.expires_at)
        if tokens.scope:
            self.scopes = tokens.scope
        self.revoked_at = None

    def set_profile(self, profile: Profile) -> None:
        self.profile_id = profile.id[:1000]
        self.display_name = profile.display_name[:255]
        self.profile_url = profile.url[:1000]
        if profile.email:
            self.email = profile.email
            self.email_verified = profile.email_verified

    # -- acting for the user (clarion.django.connect.accounts) ------------------------------

    def session(self) -> httpx.Client:
        """An authlib session on the server: signs (OAuth 1.0a) or refreshes (OAuth 2) by
        itself; refreshed tokens are saved and ``token_refreshed`` is sent. Close it after use
        (it is a context manager)."""
        from .accounts import open_session

        return open_session(self)

    def whoami(self) -> Profile:
        from .accounts import whoami

        return whoami(self)

    def post_note(self, text: str) -> str:
        from .accounts import post_note

        return post_note(self, text)


class FlowState(models.Model):  # type: ignore[misc]
    """A connection in progress: from the redirect to the server until the callback (and, when
    the site requires a verified email, until the emailed link is opened).

    Looked up by a hash of the OAuth 2 ``state`` or the OAuth 1 request token (so a database
    dump holds no usable state), bound to the browser session that started it, single-use
    (``consumed_at`` is set in the transaction that uses it; the row stays until it expires so
    that a reuse is told apart from a forgery), and expiring."""

    STAGES = [("authorize", "waiting for the server"), ("email", "waiting for the email link"),
              ("webpump", "WebPump request token")]

    key_hash = models.CharField(max_length=64, unique=True)
    session_hash = models.CharField(max_length=64, blank=True, default="")
    stage = models.CharField(max_length=10, choices=STAGES, default="authorize")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, null=True,
                             related_name="+")
    client = models.ForeignKey(ServerClient, on_delete=models.CASCADE, related_name="+")
    acct = models.CharField(max_length=330)
    redirect_uri = models.CharField(max_length=1000)
    next_url = models.CharField(max_length=1000, blank=True, default="")
    request_token: str = EncryptedSecretField(max_length=TOKEN_MAX, blank=True, default="")
    secret: str = EncryptedSecretField(max_length=TOKEN_MAX, blank=True, default="")
    # Paused for the email check: the tokens and profile obtained, not yet an account.
    paused: str = EncryptedSecretField(max_length=4 * TOKEN_MAX, blank=True, default="")
    email = models.EmailField(blank=True, default="")
    email_nonce = models.CharField(max_length=64, blank=True, default="")
    email_sends = models.PositiveSmallIntegerField(default=0)  # links mailed (or tried)
    email_sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    consumed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        app_label = "clarion_connect"
        verbose_name = "connection in progress"
        verbose_name_plural = "connections in progress"
        indexes = [models.Index(fields=["expires_at"], name="clarion_connect_flow_expiry")]

    def __repr__(self) -> str:
        return f"<FlowState {self.pk} {self.stage} {self.acct!r}>"

    def paused_data(self) -> dict[str, Any]:
        data = json.loads(self.paused) if self.paused else {}
        return data if isinstance(data, dict) else {}
