"""Acting for a user on the server of a :class:`ConnectedAccount`.

``account.session()`` is an authlib client (OAuth 1.0a: signs each request; OAuth 2: refreshes
an expired access token by itself). Refreshed tokens are saved at once, with
``token_refreshed`` and its hook, so the next worker uses them. A 401 means the server revoked
the tokens: the account is marked (``needs_reconnect``) and :class:`~clarion.errors.RevokedError`
propagates, so the site can ask the user to connect again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

from django.db import transaction

from clarion.connect import actions, oauth
from clarion.errors import RevokedError

from . import events
from .flow import make_fetcher

if TYPE_CHECKING:
    import httpx

    from clarion.connect.actions import Profile
    from clarion.connect.oauth import Tokens

    from .models import ConnectedAccount

log = logging.getLogger("clarion.connect")
T = TypeVar("T")


def open_session(account: ConnectedAccount) -> httpx.Client:
    fetcher = make_fetcher()
    client = account.server

    def on_refresh(tokens: Tokens) -> None:
        save_refreshed(account, tokens)

    # The session has a pinned transport of its own (the fetcher's settings, a new
    # connection pool), so the fetcher's own client is not needed past this point.
    try:
        return oauth.session(client.server(), client.credentials(), account.tokens(), fetcher,
                             on_refresh=on_refresh)
    finally:
        fetcher.close()


def save_refreshed(account: ConnectedAccount, tokens: Tokens) -> None:
    with transaction.atomic():
        account.set_tokens(tokens)
        account.save(update_fields=["access_token", "token_secret", "refresh_token",
                                    "expires_at", "scopes", "revoked_at", "updated_at"])
        events.refreshed(account)
    log.info("connect: refreshed the tokens of %s", account.handle)


def mark_revoked(account: ConnectedAccount) -> None:
    account.revoked_at = datetime.now(UTC)
    type(account).objects.filter(pk=account.pk).update(revoked_at=account.revoked_at)
    log.warning("connect: %s refused the tokens of %s (revoked); the user must connect again",
                account.server.host, account.handle)


def _acting(account: ConnectedAccount, action: Callable[[httpx.Client], T]) -> T:
    with open_session(account) as http:
        try:
            return action(http)
        except RevokedError as exc:
            mark_revoked(account)
            if exc.client_revoked:
                # The next connection to this server registers the site again.
                type(account.server).objects.filter(pk=account.server.pk).update(
                    expires_at=datetime.now(UTC))
            raise


def whoami(account: ConnectedAccount) -> Profile:
    server = account.server.server()
    return _acting(account, lambda http: actions.whoami(server, http))


def post_note(account: ConnectedAccount, text: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ValueError("a note needs some text")
    server = account.server.server()
    return str(_acting(account, lambda http: actions.post_note(server, http, text)))


__all__ = ["open_session", "post_note", "save_refreshed", "whoami"]
