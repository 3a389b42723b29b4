"""The parameterised header syntax GRIP uses: ``a; k=v; k2="q,v", b; k=v``.

A header value is a comma-separated list of items; an item is ``;``-separated parameters, each
``name`` or ``name=value`` where a value may be a quoted string with backslash escapes.
Commas and semicolons inside quotes do not split.
"""

from __future__ import annotations

from collections.abc import Iterable

from clarion.errors import GripError

Param = tuple[str, str | None]


def _split(value: str, sep: str) -> list[str]:
    parts: list[str] = []
    start = 0
    quoted = False
    escaped = False
    for i, ch in enumerate(value):
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append(value[start:i])
            start = i + 1
    if quoted:
        raise GripError(f"unterminated quoted string in {value!r}")
    parts.append(value[start:])
    return parts


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        out = []
        chars = iter(value[1:-1])
        for ch in chars:
            out.append(next(chars, "") if ch == "\\" else ch)
        return "".join(out)
    return value


def parse_params(item: str) -> list[Param]:
    params: list[Param] = []
    for part in _split(item, ";"):
        part = part.strip()
        if not part:
            continue
        name, eq, value = part.partition("=")
        params.append((name.strip(), _unquote(value) if eq else None))
    return params


def parse_list(values: Iterable[str]) -> list[list[Param]]:
    """Every item of every occurrence of a header, in order. Empty items are skipped."""
    items: list[list[Param]] = []
    for value in values:
        for item in _split(value, ","):
            params = parse_params(item)
            if params:
                items.append(params)
    return items


def quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def needs_quote(value: str) -> bool:
    return value == "" or any(c in value for c in ' ,;="\\\t')


def format_param(name: str, value: str | None) -> str:
    if value is None:
        return name
    return f"{name}={quote(value) if needs_quote(value) else value}"
