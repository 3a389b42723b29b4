"""Email validation of a paused connection (the partial-pipeline pattern).

When the server gives no verified address and ``CLARION["CONNECT"]["REQUIRE_EMAIL"]`` is set,
:func:`clarion.django.connect.flow.pause` keeps the flow server-side. The user gives an address;
a link signed with :mod:`django.core.signing` (its own salt), naming the paused flow and a
nonce, is mailed with Django's email backend. Opening it, in any browser (no session is needed:
the signed token names the flow), resumes the flow: the account is created with the address
marked verified. The link is single-use (the nonce is spent in the transaction that creates the
account) and expires (``EMAIL_TTL``, one day by default; and never later than the paused flow).
"""

from __future__ import annotations

import logging
import secrets
import smtplib
from datetime import UTC, datetime
from typing import Any

from django.core import signing
from django.core.mail import send_mail
from django.db import transaction
from django.template.loader import render_to_string
from django.urls import reverse

from clarion.errors import ConnectError

from . import flow as flows
from .conf import connect_settings
from .models import ConnectedAccount, FlowState
from .state import StateError

log = logging.getLogger("clarion.connect")
SALT = "clarion.connect.email-link"
MAX_EMAILS = 5  # confirmation emails one paused flow may send (failed tries count)
EMAIL_INTERVAL = 30.0  # seconds between two of them


class EmailNotSent(ConnectError):
    """Django's email backend failed to send the confirmation link."""


def send_link(request: Any, flow: FlowState, email: str) -> str:
    """Mail the confirmation link for ``flow`` to ``email``; returns the link. A new request
    replaces the nonce, so only the last link sent works."""
    conf = connect_settings()
    nonce = secrets.token_urlsafe(16)
    now = datetime.now(UTC)
    with transaction.atomic():
        # FOR UPDATE: two posts at once must not both pass the cap and the interval.
        row: FlowState | None = FlowState.objects.select_for_update().filter(
            pk=flow.pk, stage="email", consumed_at__isnull=True, expires_at__gt=now).first()
        if row is None:
            raise StateError("This connection attempt expired or was completed already. "
                             "Start again.")
        # The form mails any address it is given: without a cap it is a mail cannon.
        if row.email_sends >= MAX_EMAILS:
            raise StateError(f"{MAX_EMAILS} confirmation emails were sent for this connection "
                             "already; no more are sent. Start again.", status=429)
        if row.email_sent_at is not None and \
                (now - row.email_sent_at).total_seconds() < EMAIL_INTERVAL:
            raise StateError(f"A confirmation email was sent less than {EMAIL_INTERVAL:g} "
                             "seconds ago. Wait a little, then ask again.", status=429)
        row.email, row.email_nonce = email, nonce
        row.email_sends += 1
        row.email_sent_at = now
        row.save(update_fields=["email", "email_nonce", "email_sends", "email_sent_at"])
    token = signing.dumps({"f": flow.pk, "n": nonce}, salt=SALT, compress=True)
    path = reverse("clarion_connect:confirm_email", args=[token])
    link = conf.CALLBACK_BASE + path if conf.CALLBACK_BASE else request.build_absolute_uri(path)
    context = {"link": link, "acct": flow.acct.removeprefix("acct:"), "email": email,
               "host": flow.client.host, "ttl_hours": round(conf.EMAIL_TTL / 3600, 1)}
    subject = render_to_string("clarion/connect/email_subject.txt", context).strip()
    body = render_to_string("clarion/connect/email_body.txt", context)
    try:
        send_mail(" ".join(subject.split()), body, conf.EMAIL_FROM, [email])
    except (OSError, smtplib.SMTPException) as exc:
        # The flow stays paused: the user can ask again once the mail server is back.
        log.error("connect: the email confirmation link for %s could not be sent (%s)",
                  flow.acct, type(exc).__name__, exc_info=True)
        raise EmailNotSent("The confirmation email could not be sent. Try again in a few "
                           "minutes.") from exc
    log.info("connect: sent an email confirmation link for %s", flow.acct)
    return str(link)


def confirm(token: str) -> tuple[ConnectedAccount, bool, FlowState]:
    """Resume the flow the signed ``token`` names; raises StateError when it cannot."""
    conf = connect_settings()
    try:
        data = signing.loads(token, salt=SALT, max_age=conf.EMAIL_TTL)
    except signing.SignatureExpired:
        raise StateError("This confirmation link expired. Connect again to get a new one.",
                         status=400) from None
    except signing.BadSignature:
        raise StateError("This confirmation link is not valid (it was changed or cut short). "
                         "Copy the whole link from the email.", status=400) from None
    if not isinstance(data, dict) or not isinstance(data.get("f"), int) \
            or not isinstance(data.get("n"), str):
        raise StateError("This confirmation link is not valid.", status=400)
    now = datetime.now(UTC)
    with transaction.atomic():
        flow = (FlowState.objects.select_for_update(of=("self",))
                .select_related("client", "user")
                .filter(pk=data["f"], stage="email").first())
        if flow is None or (flow.consumed_at is not None and flow.email_nonce != data["n"]):
            raise StateError("This confirmation link was used already or replaced by a newer "
                             "one.", status=400)
        if flow.consumed_at is not None:
            raise StateError("This confirmation link was used already.", status=400)
        if not secrets.compare_digest(flow.email_nonce, data["n"]):
            raise StateError("This confirmation link was replaced by a newer one: use the "
                             "last email sent.", status=400)
        if flow.expires_at <= now:
            raise StateError("This connection attempt expired. Connect again.", status=400)
        flow.consumed_at = now
        flow.save(update_fields=["consumed_at"])
        # In the same transaction: the link is spent exactly when the account exists.
        account, created = flows.resume(flow, flow.email)
    return account, created, flow
