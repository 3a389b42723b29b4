"""Acting for the user: who they are, and posting a note, in each server's dialect.

- pump.io: ``GET /api/whoami`` redirects to the user's profile (followed here by hand, so the
  second request is signed for its own URL); a note is an Activity Streams 1.0 activity
  ``{"verb": "post", "object": {"objectType": "note", "content": …}}`` POSTed to the user's
  outbox, ``/api/user/<nick>/feed`` (the profile's ``activity-outbox`` link when it has one).
- Mastodon: ``GET /api/v1/accounts/verify_credentials``; ``POST /api/v1/statuses``.
- Any other OAuth 2 server: the OpenID ``userinfo_endpoint``; posting has no standard there.

``client`` is the session from :func:`clarion.connect.oauth.session`; a 401 from it is already a
:class:`~clarion.errors.RevokedError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import httpx
import msgspec

from clarion.connect.discovery import Server
from clarion.connect.fetch import show_url, translate_http_error
from clarion.errors import ConnectError, FetchError

__all__ = ["Profile", "post_note", "whoami"]

_AS_PUBLIC = "http://activityschema.org/collection/public"


@dataclass(frozen=True)
class Profile:
    """The connected user as their server describes them."""

    id: str  # the server's stable id for the user (pump: the person's id URI; OIDC: sub)
    handle: str  # user@host
    display_name: str = ""
    url: str = ""
    email: str = ""
    email_verified: bool = False


def _json(server: Server, response: httpx.Response, what: str) -> dict[str, Any]:
    where = show_url(response.request.url)
    try:
        body = msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        body = None
    if not 200 <= response.status_code < 300:
        error = ""
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            error = f": {body['error'][:200]}"
        raise ConnectError(
            f"{server.host} answered {response.status_code} to {what} ({where}){error}")
    if body is None:
        raise FetchError(f"{where}: the answer to {what} is not JSON") from None
    if not isinstance(body, dict):
        raise FetchError(f"{where}: the answer to {what} is not a JSON object")
    return body


def _call(client: httpx.Client, method: str, url: str, **kwargs: Any) -> httpx.Response:
    try:
        return client.request(method, url, **kwargs)
    except httpx.HTTPError as exc:
        timeout = client.timeout.read or 0.0
        raise translate_http_error(exc, url, timeout) from None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value) if isinstance(value, int) else ""


def _pump_person(server: Server, client: httpx.Client) -> dict[str, Any]:
    response = _call(client, "GET", f"{server.base_url}/api/whoami")
    if response.status_code in (301, 302, 303, 307, 308) and response.headers.get("location"):
        profile_url = urljoin(str(response.request.url), response.headers["location"])
        response = _call(client, "GET", profile_url)
    return _json(server, response, "whoami")


def whoami(server: Server, client: httpx.Client) -> Profile:
    """The user the session acts for."""
    if server.kind == "pump":
        person = _pump_person(server, client)
        nick = _text(person.get("preferredUsername"))
        return Profile(id=_text(person.get("id")), handle=f"{nick}@{server.host}",
                       display_name=_text(person.get("displayName")),
                       url=_text(person.get("url")))
    if server.kind == "mastodon":
        account = _json(server, _call(
            client, "GET", f"{server.base_url}/api/v1/accounts/verify_credentials"),
            "verify_credentials")
        return Profile(id=_text(account.get("id")),
                       handle=f"{_text(account.get('username'))}@{server.host}",
                       display_name=_text(account.get("display_name")),
                       url=_text(account.get("url")))
    if not server.userinfo_endpoint:
        raise ConnectError(f"{server.host} publishes no userinfo endpoint: Clarion cannot ask "
                           f"it who the user is")
    info = _json(server, _call(client, "GET", server.userinfo_endpoint), "userinfo")
    sub = _text(info.get("sub"))
    if not sub:
        raise ConnectError(f"{server.host}: the userinfo answer has no sub")
    name = _text(info.get("preferred_username")) or sub
    return Profile(id=sub, handle=f"{name}@{server.host}", display_name=_text(info.get("name")),
                   url=_text(info.get("profile")), email=_text(info.get("email")),
                   email_verified=info.get("email_verified") is True)


def post_note(server: Server, client: httpx.Client, text: str) -> str:
    """Post ``text`` as the user; the new object's URL (or id)."""
    if not text.strip():
        raise ValueError("a note needs some text")
    if server.kind == "pump":
        person = _pump_person(server, client)
        links = person.get("links")
        outbox = ""
        if isinstance(links, dict) and isinstance(links.get("activity-outbox"), dict):
            outbox = _text(links["activity-outbox"].get("href"))
        if not outbox:
            nick = _text(person.get("preferredUsername"))
            if not nick:
                raise ConnectError(f"{server.host}: the user's profile has no preferredUsername")
            outbox = f"{server.base_url}/api/user/{nick}/feed"
        activity = {
            "verb": "post",
            "object": {"objectType": "note", "content": text},
            "to": [{"objectType": "collection", "id": _AS_PUBLIC}],
        }
        posted = _json(server, _call(client, "POST", outbox, json=activity), "the new note")
        note = posted.get("object")
        if isinstance(note, dict):
            return _text(note.get("url")) or _text(note.get("id"))
        return _text(posted.get("id"))
    if server.kind == "mastodon":
        status = _json(server, _call(client, "POST", f"{server.base_url}/api/v1/statuses",
                                     data={"status": text}), "the new status")
        return _text(status.get("url")) or _text(status.get("uri")) or _text(status.get("id"))
    raise ConnectError(f"{server.host} is a generic OAuth 2 server: there is no standard way "
                       f"to post a note there (pump.io and Mastodon servers only)")
