"""Send a connect signal and its webhook hook together, in the caller's transaction."""

from __future__ import annotations

from typing import Any

from django.db import router

from clarion.django.hooks import (
    ACCOUNT_CONNECTED,
    ACCOUNT_DISCONNECTED,
    ACCOUNT_TOKEN_REFRESHED,
    hooks,
)

from . import signals
from .models import ConnectedAccount


def _fields(account: ConnectedAccount) -> dict[str, Any]:
    return {"account_id": account.pk, "user": account.user_id, "server": account.server.host,
            "handle": account.handle, "kind": account.server.kind, "scopes": account.scopes}


def _send_hook(name: str, account: ConnectedAccount, **extra: Any) -> None:
    if name not in hooks:  # unregistered by the project: it wants no such webhooks
        return
    # The outbox row goes in the account's database, in the same transaction as the change.
    hooks.get_hook(name).send(ConnectedAccount, using=router.db_for_write(ConnectedAccount),
                              **_fields(account), **extra)


def connected(account: ConnectedAccount, *, created: bool) -> None:
    signals.account_connected.send(ConnectedAccount, account=account, user=account.user,
                                   created=created)
    _send_hook(ACCOUNT_CONNECTED.name, account, created=created)


def disconnected(account: ConnectedAccount) -> None:
    signals.account_disconnected.send(ConnectedAccount, account=account, user=account.user)
    _send_hook(ACCOUNT_DISCONNECTED.name, account)


def refreshed(account: ConnectedAccount) -> None:
    signals.token_refreshed.send(ConnectedAccount, account=account)
    _send_hook(ACCOUNT_TOKEN_REFRESHED.name, account,
               expires_at=account.expires_at.isoformat() if account.expires_at else None)
