"""A table of channel patterns (globs) to handlers, for subscribe permissions and publish
validators.

Patterns are shell globs matched against the whole channel name with
:func:`fnmatch.fnmatchcase` (``chat:*``, ``chat:room-?``, ``news``; case matters, as in channel
names). When several match, the most specific wins: the pattern with the most literal
characters (``chat:lobby`` before ``chat:*`` before ``*``), then the one registered first.
Specificity rather than registration order alone, because Django imports apps in an order a
project does not usually think about.

Entries come from two places: decorators/``register`` calls in code, and a ``CLARION["PROXY"]``
table of dotted paths, imported on first use and dropped when the setting changes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Generic, TypeVar

from .conf import imported, on_reset, proxy_settings

__all__ = ["PatternTable", "specificity"]

H = TypeVar("H")

_GLOB = frozenset("*?[]")


def specificity(pattern: str) -> int:
    """How many characters of ``pattern`` are literal (outside ``*``, ``?`` and ``[...]``)."""
    count = 0
    in_set = False
    for char in pattern:
        if in_set:
            in_set = char != "]"
        elif char == "[":
            in_set = True
        elif char not in _GLOB:
            count += 1
    return count


@dataclass(frozen=True, slots=True)
class _Entry(Generic[H]):
    pattern: str
    handler: H
    order: int


class PatternTable(Generic[H]):
    """Patterns registered in code plus those of one ``CLARION["PROXY"]`` key."""

    def __init__(self, setting: str, load: Callable[[Callable[..., Any]], H]) -> None:
        self._setting = setting
        self._load = load  # an imported dotted-path target -> a handler
        self._code: dict[str, _Entry[H]] = {}
        self._from_settings: list[_Entry[H]] | None = None
        self._lock = threading.Lock()
        self._counter = 0
        on_reset(self._drop_settings)

    def add(self, pattern: str, handler: H) -> None:
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"a channel pattern must be a non-empty string, not {pattern!r}")
        with self._lock:
            if pattern in self._code:
                raise ValueError(f"{pattern!r} is registered already "
                                 f"({self._code[pattern].handler!r}); unregister it first")
            self._counter += 1
            self._code[pattern] = _Entry(pattern, handler, self._counter)

    def remove(self, pattern: str) -> None:
        with self._lock:
            if self._code.pop(pattern, None) is None:
                raise KeyError(f"{pattern!r} is not registered")

    def find(self, channel: str) -> H | None:
        """The handler of the most specific pattern matching ``channel``, or None."""
        best: _Entry[H] | None = None
        best_key: tuple[int, int] = (-1, 0)
        for entry in self._entries():
            if fnmatchcase(channel, entry.pattern):
                key = (specificity(entry.pattern), -entry.order)
                if key > best_key:
                    best, best_key = entry, key
        return None if best is None else best.handler

    def patterns(self) -> list[str]:
        return [entry.pattern for entry in self._entries()]

    def _entries(self) -> list[_Entry[H]]:
        loaded = self._from_settings
        if loaded is None:
            loaded = self._settings_entries()
        return [*self._code.values(), *loaded]

    def _settings_entries(self) -> list[_Entry[H]]:
        table: Mapping[str, str] = getattr(proxy_settings(), self._setting)
        entries = []
        # Settings entries come after every code registration of the same specificity: their
        # order numbers start past any the code can reach in practice.
        for index, (pattern, path) in enumerate(table.items()):
            where = f"CLARION['PROXY']['{self._setting}'][{pattern!r}]"
            entries.append(_Entry(pattern, self._load(imported(path, where)), 10**9 + index))
        with self._lock:
            self._from_settings = entries
        return entries

    def _drop_settings(self) -> None:
        with self._lock:
            self._from_settings = None
