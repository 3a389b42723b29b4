"""Durable realtime publications: written to the outbox in your transaction, published after.

``publish_durably(channel, data)`` writes one :class:`~clarion.django.models.Event` row (no
hook, a channel) in the current transaction and returns its id. Nothing leaves the process:
once the transaction commits, the webhook worker (``manage.py clarion_worker``, or the one
inside ``clarion serve --webhooks-db``) publishes it to the hub, with the idempotency key set
(the id unless you give one), so the hub drops a repeat. If the transaction rolls back, the
publication never existed. The guarantees:

- **At least once, no loss**: a crash between commit and publish leaves the row, which the
  next worker publishes; a hub that is down means retries with backoff (0.5 s doubling to
  30 s), logged and counted (``clarion_webhook_relayed_publications_total{outcome}``).
- **Once, as subscribers see it**, when a repeat reaches the hub within its idempotency window
  (``idempotent_result_ttl``, 5 minutes): a publication retried after a timeout, or after a
  worker died mid-publish, is dropped by the hub.
- **In order per channel**: a channel's publications are published in outbox order (the
  order the rows were written); a failed one holds back the later ones of its channel until
  it succeeds, and claims are serialized across workers. Rows written by *concurrent*
  transactions are ordered by when each was written, not when it committed, so a slow
  transaction's row may go out after a later row of a quicker one that committed first.
  Channels are independent of each other.
- **Refusals end it**: a publication the hub refuses for good (a channel in no namespace it
  knows) is logged, counted as ``refused`` and kept in the table with the reason; it does
  not hold back its channel.

Hooks with a ``channel`` (:mod:`clarion.django.hooks`) use the same rows: one event, one id,
delivered to the webhook listeners and published to the channel.
"""

from __future__ import annotations

import json
import string
from collections.abc import Set
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.utils import timezone

from clarion.errors import ConfigError, PayloadTooLarge, WebhookError

__all__ = ["MAX_CHANNEL_LENGTH", "MAX_KEY_LENGTH", "check_channel", "check_template",
           "publish_durably"]

# The hub refuses longer names (clarion.hub.channels.MAX_CHANNEL_LENGTH, Centrifugo's limit).
MAX_CHANNEL_LENGTH = 255
MAX_KEY_LENGTH = 255


def check_channel(channel: object, *, where: str = "publication") -> str:
    """``channel`` if the hub could accept it: a non-empty string of printable characters, at
    most 255 long; else a clear :class:`~clarion.errors.WebhookError` (the hub's namespaces
    are the hub's to check: an unknown one is refused when the publication arrives)."""
    if not isinstance(channel, str) or not channel:
        raise WebhookError(f"{where}: the channel must be a non-empty string, not {channel!r}")
    if len(channel) > MAX_CHANNEL_LENGTH:
        raise WebhookError(f"{where}: channel {channel[:40]!r}… is {len(channel)} characters; "
                           f"the hub takes at most {MAX_CHANNEL_LENGTH}")
    if not channel.isprintable():
        bad = next(c for c in channel if not c.isprintable())
        raise WebhookError(f"{where}: channel {channel!r} holds {bad!r}, which the hub refuses "
                           f"(control and other unprintable characters)")
    return channel


def check_template(template: object, fields: Set[str] | None, *, where: str) -> None:
    """A hook's channel template: a format string whose fields the hook provides (any field
    when ``fields`` is None), whose fixed text the hub would accept. Raises ConfigError."""
    if not isinstance(template, str) or not template:
        raise ConfigError(f"{where}: channel must be a non-empty format string, "
                          f"not {template!r}")
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"{where}: channel template {template!r} is not a format string: "
                          f"{exc}") from None
    literal = "".join(text for text, _, _, _ in parts)
    named = [name for _, name, _, _ in parts if name is not None]
    for name in named:
        root = name.split(".", 1)[0].split("[", 1)[0]
        if not root or root.isdigit():
            raise ConfigError(f"{where}: channel template {template!r} must name its fields "
                              f"({{customer_id}}), not number them")
        if fields is not None and root not in fields:
            raise ConfigError(f"{where}: channel template {template!r} names {root!r}, which "
                              f"the hook does not provide; it provides {sorted(fields)}")
    try:
        check_channel(literal or "x", where=where)
    except WebhookError as exc:
        raise ConfigError(str(exc)) from None


def publish_durably(channel: str, data: Any, *, idempotency_key: str | None = None,
                    using: str | None = None) -> str:
    """Write a publication of ``data`` (anything JSON-serializable, as Django's encoder does
    it) to ``channel`` into the outbox, in the current transaction of database ``using``
    (default ``CLARION['WEBHOOKS']['DATABASE']``); returns its id (``msg_…``). The worker
    publishes it after commit with ``idempotency_key`` (default: the id)."""
    from clarion.django.conf import webhook_settings
    from clarion.django.hooks import new_message_id, wake_after_commit
    from clarion.django.models import Event

    check_channel(channel, where="publish_durably")
    if idempotency_key is not None and (not isinstance(idempotency_key, str)
                                        or not 0 < len(idempotency_key) <= MAX_KEY_LENGTH):
        raise WebhookError(f"publish_durably: idempotency_key must be a string of 1-"
                           f"{MAX_KEY_LENGTH} characters, not {idempotency_key!r}")
    conf = webhook_settings()
    try:
        body = json.dumps(data, cls=DjangoJSONEncoder, separators=(",", ":"),
                          ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise WebhookError(f"publish_durably: data is not JSON-serializable: {exc}") from None
    size = len(body.encode())
    if size > conf.MAX_PAYLOAD:
        raise PayloadTooLarge(f"publish_durably: the data is {size} bytes, over MAX_PAYLOAD "
                              f"({conf.MAX_PAYLOAD})")
    db = using or conf.DATABASE
    msg_id = new_message_id()
    # Dispatched already: there is no listener to fan out to.
    Event.objects.using(db).create(msg_id=msg_id, hook="", payload=body, data={},
                                   channel=channel, publish_key=idempotency_key or "",
                                   dispatched_at=timezone.now())
    wake_after_commit(db)
    return msg_id
