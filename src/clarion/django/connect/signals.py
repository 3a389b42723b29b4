"""Signals of :mod:`clarion.django.connect`, sent inside the transaction that made the change.

``account_connected(sender=ConnectedAccount, account, user, created)``
    a user connected an account (``created`` False: an existing one got new tokens).
``account_disconnected(sender=ConnectedAccount, account, user)``
    a user disconnected an account (``account`` is the deleted instance, its pk still set).
``token_refreshed(sender=ConnectedAccount, account)``
    the OAuth 2 tokens of an account were refreshed and saved.

The matching webhook hooks (``clarion.account.connected``, ``.disconnected``,
``.token_refreshed``, :mod:`clarion.django.hooks`) are sent alongside; they carry no token.
"""

from __future__ import annotations

from django.dispatch import Signal

account_connected = Signal()
account_disconnected = Signal()
token_refreshed = Signal()
