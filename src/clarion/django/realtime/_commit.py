"""Publications made inside a transaction go out after it commits, together.

Each run of publications made at one savepoint level is one ``on_commit`` callback (a
:class:`Pending`), so Django's own bookkeeping drops it when that savepoint or the transaction
rolls back: a rolled-back change publishes nothing. A publication joins the last callback
registered when that callback belongs to the same savepoint level (its savepoint ids are the
current ones), so a transaction without inner atomic blocks sends one ``/api/batch`` (or one
Redis pipeline) however many publications it made; each inner atomic block that publishes
starts a new callback, which keeps the order of publications across levels.

After commit a failure cannot undo the change, and raising from the hook would turn a
committed request into an error page, so failures are logged (``clarion.realtime``, with the
traceback) and the publication is lost: ``durable=True`` is for publications that must not be.
"""

from __future__ import annotations

import logging

from django.db import connections

from clarion.django.realtime import _routes
from clarion.django.realtime._outgoing import Outgoing
from clarion.errors import HubError

log = logging.getLogger("clarion.realtime")


class Pending:
    """An ``on_commit`` callback holding the publications of one savepoint level."""

    def __init__(self) -> None:
        self.items: list[Outgoing] = []

    def __call__(self) -> None:
        try:
            results = _routes.publisher().publish_batch(self.items)
        except HubError as exc:
            log.error("%d publications made in a committed transaction were lost: %s "
                      "(channels %s)", len(self.items), exc, _names(self.items), exc_info=True)
            return
        except Exception:
            log.exception("%d publications made in a committed transaction were lost "
                          "(channels %s)", len(self.items), _names(self.items))
            return
        for item, result in zip(self.items, results, strict=True):
            if isinstance(result, HubError):
                log.error("a publication made in a committed transaction was lost: %s "
                          "(channels %s)", result, _names([item]), exc_info=result)


def _names(items: list[Outgoing]) -> str:
    names = sorted({channel for item in items for channel in item.channels})
    return ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")


def after_commit(item: Outgoing, using: str) -> None:
    """Queue ``item`` for the commit of the transaction open on ``using``."""
    connection = connections[using]
    savepoints = set(connection.savepoint_ids)
    hooks = connection.run_on_commit  # Django's list of (savepoint ids, callback, robust)
    if hooks:
        ids, last = hooks[-1][0], hooks[-1][1]
        if isinstance(last, Pending) and ids == savepoints:
            last.items.append(item)
            return
    pending = Pending()
    pending.items.append(item)
    connection.on_commit(pending)
