"""The flow state, kept server-side: created at the start, consumed once at the callback.

The callback may land on any worker, after a restart: nothing lives in process memory. A state is
bound to the browser session that started it (a login-CSRF attacker cannot complete a flow in
the victim's browser with his own authorization), used once, and expires
(``CLARION["CONNECT"]["STATE_TTL"]``, 10 minutes by default).
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import transaction

from clarion.errors import AuthorizationError

from .models import FlowState

log = logging.getLogger("clarion.connect")

# Rows stay this long after they expire, so that a late reuse still gets "already used" or
# "expired" rather than "unknown"; older ones are purged when a flow starts.
KEEP_EXPIRED = timedelta(days=1)


class StateError(AuthorizationError):
    """The callback's state is missing, unknown, used already, expired, or from another
    browser session. ``status`` is the HTTP status of the page that says so."""

    def __init__(self, reason: str, *, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def session_hash(request: Any) -> str:
    """The hash of the browser's session key; the session is saved first if it is new."""
    session = request.session
    if session.session_key is None:
        session.save()
    return digest(f"clarion.connect.session:{session.session_key}")


MAX_OPEN_PER_USER = 10  # connection attempts of one user waiting for a server at once


def check_open(user: Any) -> None:
    """StateError (429) when ``user`` has :data:`MAX_OPEN_PER_USER` attempts open already: each
    start writes a row (and costs requests to a server), and nobody needs more at once."""
    if user is None:
        return
    open_now = FlowState.objects.filter(user=user, stage="authorize", consumed_at__isnull=True,
                                        expires_at__gt=datetime.now(UTC)).count()
    if open_now >= MAX_OPEN_PER_USER:
        raise StateError(f"You have {open_now} connection attempts open already. Finish one, "
                         "or wait until they expire, then start again.", status=429)


def create(key: str, *, request: Any | None, ttl: float, **fields: Any) -> FlowState:
    now = datetime.now(UTC)
    FlowState.objects.filter(expires_at__lt=now - KEEP_EXPIRED).delete()
    flow: FlowState = FlowState.objects.create(
        key_hash=digest(key), session_hash=session_hash(request) if request is not None else "",
        expires_at=now + timedelta(seconds=ttl), **fields)
    return flow


def consume(key: str | None, *, request: Any | None, stage: str = "authorize") -> FlowState:
    """The state named ``key``, marked used, or :class:`StateError`. It commits on its own:
    a state is spent once the server's answer is tried (an authorization code or a verifier is
    single-use on the server too), even if the rest of the callback then fails."""
    if not key:
        raise StateError("The server's answer carries no state: the connection cannot be "
                         "matched to one this site started. Start again.")
    now = datetime.now(UTC)
    with transaction.atomic():
        # FOR UPDATE: of two callbacks racing with the same state, the second waits for the
        # first to commit, then sees consumed_at set.
        flow: FlowState | None = (FlowState.objects.select_for_update().select_related("client")
                .filter(key_hash=digest(key), stage=stage).first())
        if flow is None:
            raise StateError("This connection attempt is unknown to this site (the link is "
                             "wrong, or the attempt is older than a day). Start again.")
        if flow.consumed_at is not None:
            raise StateError("This connection attempt was completed already; its link cannot "
                             "be used twice. Start again if you want to connect once more.")
        if flow.expires_at <= now:
            raise StateError("This connection attempt expired: it was not completed in time. "
                             "Start again.")
        if request is not None and flow.session_hash and \
                flow.session_hash != session_hash(request):
            raise StateError("This connection attempt was started in another browser session; "
                             "it can only be completed there. Start again here.", status=403)
        flow.consumed_at = now
        flow.save(update_fields=["consumed_at"])
    return flow
