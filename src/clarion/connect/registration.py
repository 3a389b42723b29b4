"""Dynamic client registration: once per server, reused for every user of it.

Three dialects, chosen by the server's kind:

- pump.io, ``POST /api/client/register`` (form): ``type=client_associate``,
  ``application_type`` (web or native), ``application_name``, ``redirect_uris`` space-separated;
  the answer is ``client_id``, ``client_secret`` and ``expires_at`` (pump.io always says 0: never).
- Mastodon, ``POST /api/v1/apps`` (form): ``client_name``, ``redirect_uris`` space-separated,
  ``scopes`` space-separated, ``website``; the answer is ``client_id``, ``client_secret`` (and
  ``client_secret_expires_at`` from 4.4).
- RFC 7591, ``POST`` of JSON client metadata to the ``registration_endpoint``; the answer (201)
  adds ``client_secret_expires_at`` (0: never), ``registration_access_token`` and
  ``registration_client_uri`` (RFC 7592, kept so a later version can update or delete).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec

from clarion.connect.discovery import Server
from clarion.connect.fetch import Fetcher, show_url
from clarion.errors import RegistrationError

__all__ = ["ClientCredentials", "register"]

log = logging.getLogger("clarion.connect")

_MAX_ERROR_TEXT = 200


@dataclass(frozen=True)
class ClientCredentials:
    """What a server issued to Clarion as a client. The secret is a password: store it
    encrypted (the Django app does) and never log it (``repr`` hides it)."""

    client_id: str
    client_secret: str
    expires_at: int | None = None  # epoch seconds; None: never
    registration_access_token: str = ""
    registration_client_uri: str = ""

    def __repr__(self) -> str:
        return (f"ClientCredentials(client_id={self.client_id!r}, client_secret='***', "
                f"expires_at={self.expires_at!r})")


def register(
    server: Server,
    fetcher: Fetcher,
    *,
    client_name: str,
    redirect_uris: list[str],
    scopes: tuple[str, ...] = (),
    website: str = "",
    client_type: str = "web",
) -> ClientCredentials:
    """Register with ``server``; :class:`RegistrationError` if it refuses or answers garbage
    (:class:`~clarion.errors.FetchError` if it cannot be reached at all)."""
    if not server.registration_endpoint:
        raise RegistrationError(
            f"{server.host} publishes no client registration endpoint; register the client "
            f"by hand there and give its credentials")
    if client_type not in ("web", "native"):
        raise ValueError(f"client_type must be 'web' or 'native', not {client_type!r}")
    if not redirect_uris:
        raise ValueError("at least one redirect URI is needed")
    url = server.registration_endpoint
    if server.kind == "pump":
        form = {
            "type": "client_associate",
            "application_type": client_type,
            "application_name": client_name,
            "redirect_uris": " ".join(redirect_uris),
        }
        response = fetcher.post(url, data=form)
    elif server.kind == "mastodon":
        form = {"client_name": client_name, "redirect_uris": " ".join(redirect_uris)}
        if scopes:
            form["scopes"] = " ".join(scopes)
        if website:
            form["website"] = website
        response = fetcher.post(url, data=form)
    else:
        metadata: dict[str, Any] = {
            "client_name": client_name,
            "redirect_uris": list(redirect_uris),
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            # A web client keeps a secret; a native one cannot, and relies on PKCE alone.
            "token_endpoint_auth_method":
                "client_secret_basic" if client_type == "web" else "none",
        }
        if scopes:
            metadata["scope"] = " ".join(scopes)
        if website:
            metadata["client_uri"] = website
        response = fetcher.post(url, json=metadata)
    creds = _credentials(server, response, needs_secret=client_type == "web")
    log.info("registered client %s at %s (%s)", creds.client_id, server.host, server.kind)
    return creds


def _refusal(server: Server, response: httpx.Response) -> RegistrationError:
    detail = ""
    try:
        body = msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        body = None
    if isinstance(body, dict):
        # RFC 7591 section 3.2.2: error and error_description; Mastodon and pump.io: error.
        parts = [str(body[k]) for k in ("error", "error_description") if body.get(k)]
        detail = ": " + ": ".join(parts)[:_MAX_ERROR_TEXT] if parts else ""
    elif response.headers.get("content-type", "").startswith("text/plain"):
        detail = ": " + response.text.strip()[:_MAX_ERROR_TEXT]
    return RegistrationError(
        f"{server.host} refused the client registration ({response.status_code}"
        f" at {show_url(response.request.url)}){detail}")


def _credentials(server: Server, response: httpx.Response, *,
                 needs_secret: bool) -> ClientCredentials:
    if not 200 <= response.status_code < 300:
        raise _refusal(server, response)
    where = show_url(response.request.url)
    try:
        body = msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        raise RegistrationError(
            f"{server.host} answered the client registration with something that is not "
            f"JSON ({where})") from None
    if not isinstance(body, dict):
        raise RegistrationError(f"{server.host}: the registration answer is not a JSON object")
    client_id = body.get("client_id")
    secret = body.get("client_secret", "")
    if isinstance(client_id, int):
        client_id = str(client_id)
    if not isinstance(client_id, str) or not client_id:
        raise RegistrationError(f"{server.host}: the registration answer has no client_id")
    if not isinstance(secret, str) or (needs_secret and not secret):
        raise RegistrationError(f"{server.host}: the registration answer has no client_secret")
    expires = body.get("client_secret_expires_at", body.get("expires_at"))
    if expires in (None, 0, "0"):
        expires_at = None
    elif isinstance(expires, int) and not isinstance(expires, bool) and expires > 0:
        expires_at = expires
    else:
        raise RegistrationError(
            f"{server.host}: the registration answer's expiry {expires!r} is not a time")
    token = body.get("registration_access_token", "")
    client_uri = body.get("registration_client_uri", "")
    return ClientCredentials(
        client_id=client_id,
        client_secret=secret,
        expires_at=expires_at,
        registration_access_token=token if isinstance(token, str) else "",
        registration_client_uri=client_uri if isinstance(client_uri, str) else "",
    )
