"""The encrypted columns of the connect tables, read and rewritten raw for ``clarion_reencrypt``
(which must see values as stored: one no key decrypts is reported, not raised mid-scan)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from django.db import connections, router, transaction

from .models import ConnectedAccount, FlowState, ServerClient

MODELS = (ServerClient, ConnectedAccount, FlowState)


def encrypted_columns(model: type) -> list[str]:
    from clarion.django.encryption import EncryptedSecretField

    return [f.column for f in model._meta.concrete_fields  # type: ignore[attr-defined]
            if isinstance(f, EncryptedSecretField)]


@dataclass
class StoredRow:
    table: str
    id: int
    values: dict[str, str]


def stored_rows(model: type, batch: int = 500) -> Iterator[list[StoredRow]]:
    """Every row's encrypted columns as stored, in batches, by id."""
    using = router.db_for_write(model)
    conn = connections[using]
    table = model._meta.db_table  # type: ignore[attr-defined]
    columns = encrypted_columns(model)
    quoted = ", ".join(conn.ops.quote_name(c) for c in columns)
    last = 0
    while True:
        with conn.cursor() as cur:
            cur.execute(f"SELECT id, {quoted} FROM {conn.ops.quote_name(table)} "
                        "WHERE id > %s ORDER BY id LIMIT %s", [last, batch])
            rows = [StoredRow(table, r[0], {c: r[i + 1] or "" for i, c in enumerate(columns)})
                    for r in cur.fetchall()]
        if not rows:
            return
        yield rows
        last = rows[-1].id


def rewrite(model: type, row: StoredRow, func: Callable[[str], str]) -> int:
    """Store ``func`` of each encrypted value of ``row``; a column changed since it was read
    (a refresh saved a new token meanwhile) is left alone: it is on the current key already.
    Returns the number of values rewritten."""
    using = router.db_for_write(model)
    conn = connections[using]
    table = conn.ops.quote_name(row.table)
    done = 0
    with transaction.atomic(using=using), conn.cursor() as cur:
        for column, old in row.values.items():
            new = func(old)
            if new == old:
                continue
            name = conn.ops.quote_name(column)
            cur.execute(f"UPDATE {table} SET {name} = %s WHERE id = %s AND {name} = %s",
                        [new, row.id, old])
            done += cur.rowcount
    return done
