"""In-memory OAuth 2 models and grants for authlib's Flask AuthorizationServer (the generic
OAuth 2 provider and the Mastodon-shaped one share them)."""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from authlib.oauth2.rfc6749 import ClientMixin, TokenMixin, grants
from authlib.oauth2.rfc6749.errors import InvalidRequestError
from authlib.oauth2.rfc6750 import BearerTokenValidator
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge

from .base import User

CODE_LIFETIME = 600  # seconds: RFC 6749 §4.1.2's recommended maximum


@dataclass
class Client(ClientMixin):  # type: ignore[misc]
    client_id: str
    client_secret: str
    redirect_uris: list[str]
    scope: str = ""
    client_name: str = ""
    website: str = ""
    grant_types: list[str] = field(default_factory=lambda: ["authorization_code",
                                                            "refresh_token"])
    response_types: list[str] = field(default_factory=lambda: ["code"])
    token_endpoint_auth_method: str = "client_secret_basic"
    # any auth method the grant allows is accepted (Mastodon takes basic and post)
    lenient_auth: bool = False
    revoked: bool = False
    created_at: int = field(default_factory=lambda: int(time.time()))

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return self.redirect_uris[0] if self.redirect_uris else ""

    def get_allowed_scope(self, scope: str) -> str:
        if not scope:
            return ""
        if not self.scope:
            return scope
        allowed = set(self.scope.split())
        return " ".join(s for s in scope.split() if s in allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return secrets.compare_digest(self.client_secret, client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if endpoint != "token":
            return True
        if self.lenient_auth:
            return method in ("client_secret_basic", "client_secret_post")
        return method == self.token_endpoint_auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type in self.response_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


@dataclass
class AuthorizationCode:
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    username: str
    code_challenge: str | None
    code_challenge_method: str | None
    issued_at: float = field(default_factory=time.time)

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def is_expired(self) -> bool:
        return time.time() - self.issued_at > CODE_LIFETIME


@dataclass
class Token(TokenMixin):  # type: ignore[misc]
    access_token: str
    client_id: str
    username: str
    scope: str
    expires_in: int
    refresh_token: str = ""
    issued_at: int = field(default_factory=lambda: int(time.time()))
    revoked: bool = False
    refresh_revoked: bool = False
    store: Store | None = None

    def check_client(self, client: Client) -> bool:
        return self.client_id == client.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return self.expires_in

    def is_expired(self) -> bool:
        return time.time() >= self.issued_at + self.expires_in

    def is_revoked(self) -> bool:
        if self.revoked:
            return True
        # a revoked client's tokens stop working too (as Doorkeeper and most servers do)
        client = self.store.clients.get(self.client_id) if self.store else None
        return client is None or client.revoked

    def get_user(self) -> str:
        return self.username

    def get_client(self) -> Client | None:
        return self.store.clients.get(self.client_id) if self.store else None


@dataclass
class Store:
    users: dict[str, User]
    clients: dict[str, Client] = field(default_factory=dict)
    codes: dict[str, AuthorizationCode] = field(default_factory=dict)
    tokens: dict[str, Token] = field(default_factory=dict)  # by access token
    notes: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock)

    def query_client(self, client_id: str) -> Client | None:
        client = self.clients.get(client_id)
        return None if client is None or client.revoked else client

    def add_client(self, client: Client) -> Client:
        with self.lock:
            self.clients[client.client_id] = client
        return client

    def token_by_refresh(self, refresh_token: str) -> Token | None:
        with self.lock:
            for token in self.tokens.values():
                if token.refresh_token and secrets.compare_digest(token.refresh_token,
                                                                  refresh_token):
                    return token
        return None

    # -- what tests call ---------------------------------------------------------------------

    def revoke_tokens(self, username: str | None = None) -> int:
        """Revoke every access and refresh token (of ``username`` if given); returns how many."""
        n = 0
        with self.lock:
            for token in self.tokens.values():
                if username is None or token.username == username:
                    token.revoked = token.refresh_revoked = True
                    n += 1
        return n

    def revoke_client(self, client_id: str | None = None) -> int:
        """Revoke a client (all clients if None): its credentials and tokens stop working."""
        n = 0
        with self.lock:
            for client in self.clients.values():
                if client_id is None or client.client_id == client_id:
                    client.revoked = True
                    n += 1
        return n

    def expire_tokens(self) -> None:
        """Make every access token expired now (their refresh tokens still work)."""
        with self.lock:
            for token in self.tokens.values():
                token.issued_at = int(time.time()) - token.expires_in - 1


def make_save_token(store: Store, knobs_ttl: Any) -> Any:
    def save_token(token: dict[str, Any], request: Any) -> None:
        user = request.user
        username = user.username if isinstance(user, User) else str(user)
        with store.lock:
            store.tokens[token["access_token"]] = Token(
                access_token=token["access_token"], client_id=request.client.client_id,
                username=username, scope=token.get("scope", ""),
                expires_in=int(token.get("expires_in", knobs_ttl())),
                refresh_token=token.get("refresh_token", ""), store=store)

    return save_token


class S256Required(CodeChallenge):  # type: ignore[misc]
    """PKCE with S256 only and always (RFC 9700 §2.1.1): a request without a challenge, or
    with "plain", is refused at the authorization endpoint."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("Missing 'code_challenge' (PKCE with S256 is required)",
                                      redirect_uri=redirect_uri)
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("'code_challenge_method' must be S256",
                                      redirect_uri=redirect_uri)
        super().validate_code_challenge(grant, redirect_uri)


class S256Optional(CodeChallenge):  # type: ignore[misc]
    """PKCE as Mastodon (Doorkeeper) has it: optional, S256 only."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def __init__(self) -> None:
        super().__init__(required=False)


def make_code_grant(store: Store, auth_methods: list[str]) -> type[grants.AuthorizationCodeGrant]:
    class CodeGrant(grants.AuthorizationCodeGrant):  # type: ignore[misc]
        TOKEN_ENDPOINT_AUTH_METHODS = auth_methods

        def save_authorization_code(self, code: str, request: Any) -> None:
            data = request.payload.data
            with store.lock:
                store.codes[code] = AuthorizationCode(
                    code=code, client_id=request.client.client_id,
                    redirect_uri=request.payload.redirect_uri or "",
                    scope=request.payload.scope or "", username=request.user.username,
                    code_challenge=data.get("code_challenge"),
                    code_challenge_method=data.get("code_challenge_method"))

        def query_authorization_code(self, code: str, client: Client) -> AuthorizationCode | None:
            with store.lock:
                item = store.codes.get(code)
            if item and item.client_id == client.client_id and not item.is_expired():
                return item
            return None

        def delete_authorization_code(self, authorization_code: AuthorizationCode) -> None:
            with store.lock:
                store.codes.pop(authorization_code.code, None)

        def authenticate_user(self, authorization_code: AuthorizationCode) -> User | None:
            return store.users.get(authorization_code.username)

    return CodeGrant


def make_refresh_grant(store: Store) -> type[grants.RefreshTokenGrant]:
    class RefreshGrant(grants.RefreshTokenGrant):  # type: ignore[misc]
        TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]
        INCLUDE_NEW_REFRESH_TOKEN = True  # rotation: each refresh token works once

        def authenticate_refresh_token(self, refresh_token: str) -> Token | None:
            token = store.token_by_refresh(refresh_token)
            if token and not token.refresh_revoked and not token.is_revoked():
                return token
            return None

        def authenticate_user(self, credential: Token) -> User | None:
            return store.users.get(credential.username)

        def revoke_old_credential(self, credential: Token) -> None:
            with store.lock:
                credential.revoked = credential.refresh_revoked = True

    return RefreshGrant


def make_revocation_endpoint(store: Store) -> type[RevocationEndpoint]:
    class Revocation(RevocationEndpoint):  # type: ignore[misc]
        CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

        def query_token(self, token_string: str, token_type_hint: str | None) -> Token | None:
            with store.lock:
                if token_type_hint != "refresh_token" and token_string in store.tokens:
                    return store.tokens[token_string]
            return store.token_by_refresh(token_string)

        def revoke_token(self, token: Token, request: Any) -> None:
            with store.lock:
                token.revoked = token.refresh_revoked = True

    return Revocation


def make_bearer_validator(store: Store) -> BearerTokenValidator:
    class Validator(BearerTokenValidator):  # type: ignore[misc]
        def authenticate_token(self, token_string: str) -> Token | None:
            with store.lock:
                return store.tokens.get(token_string)

    return Validator()
