"""Subscription filters, as Pushpin applies them to each published message per subscriber.

The context is the subscriber's meta (``Grip-Set-Meta``), the item's meta, and the
subscriber's last ids per channel (which also says what it is subscribed to).
- ``skip-self``: drop when sub meta ``user`` equals publish meta ``sender``.
- ``skip-users``: drop when sub meta ``user`` is in publish meta ``skip_users`` (comma list).
- ``require-sub``: drop unless subscribed to the channel named by publish meta ``require_sub``.
- ``build-id``: replace ``%I`` in the content with sub meta ``id_format`` rendered from the last
  ids (``%(channel)s``); ``id_encoding=hex`` hex-encodes it.
- ``var-subst``: replace ``%(name)s`` in the content with sub meta values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from clarion.errors import GripError

_DIRECTIVE = re.compile(rb"%(?:\(([^)]*)\))?(.)", re.S)


def _render(template: bytes, values: Mapping[str, str], what: str) -> bytes:
    def sub(m: re.Match[bytes]) -> bytes:
        name, kind = m.group(1), m.group(2)
        if kind == b"%" and name is None:
            return b"%"
        if kind != b"s":
            raise GripError(f"{what}: unknown directive %{kind.decode(errors='replace')}")
        if name is None:
            raise GripError(f"{what}: directive s needs a name, as in %(name)s")
        try:
            key = name.decode()
        except UnicodeDecodeError:
            # Published content is any bytes; meta names are text, so no such name exists.
            raise GripError(f"{what}: no such variable {name!r}") from None
        if key not in values:
            raise GripError(f"{what}: no such variable {key!r}")
        return values[key].encode()

    return _DIRECTIVE.sub(sub, template)


def apply(filters: Sequence[str], content: bytes, sub_meta: Mapping[str, str],
          pub_meta: Mapping[str, str], last_ids: Mapping[str, str | None]) -> bytes | None:
    """The content this subscriber gets, or None to drop the message for it. A filter that
    cannot run (a missing ``id_format``, an unknown variable) raises GripError."""
    user = sub_meta.get("user", "")
    for name in filters:
        if name == "skip-self":
            sender = pub_meta.get("sender", "")
            if user and sender and user == sender:
                return None
        elif name == "skip-users":
            skip = {s.strip() for s in pub_meta.get("skip_users", "").split(",") if s.strip()}
            if user and user in skip:
                return None
        elif name == "require-sub":
            required = pub_meta.get("require_sub", "")
            if required and required not in last_ids:
                return None
        elif name == "build-id":
            fmt = sub_meta.get("id_format")
            if fmt is None:
                raise GripError("build-id: no sub meta 'id_format'")
            ids = {k: v or "" for k, v in last_ids.items()}
            rendered = _render(fmt.encode(), ids, "build-id") if ids else b""
            encoding = sub_meta.get("id_encoding")
            if encoding == "hex":
                rendered = rendered.hex().encode()
            elif encoding is not None:
                raise GripError(f"build-id: unsupported encoding {encoding!r}")
            content = content.replace(b"%I", rendered)
        elif name == "var-subst":
            content = _render(content, sub_meta, "var-subst")
    return content
