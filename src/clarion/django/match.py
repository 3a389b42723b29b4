"""Field matchers for listener filters: durian's six, plus comparisons, membership and logic.

A listener's filter maps field names to matchers; an event matches when every field's matcher
accepts the event's value. Matchers are stored as JSON (``{"op": "startswith", "value": "J"}``),
never pickled, so the database can evaluate them: PostgreSQL runs the same rules in the
``clarion_match`` SQL function (see the migrations), SQLite calls :func:`matches` through a
registered function. The Python here is the definition both follow.

Equality is JSON equality: ``1 == 1.0`` but ``True != 1``. Strings compare by code point (as
PostgreSQL's "C" collation does). A comparison between different types is simply false.
``Like`` is a regular expression searched anywhere in the string; on PostgreSQL it runs on the
database's own engine, so patterns are limited to the syntax both share (checked on creation).
"""

from __future__ import annotations

import functools
import math
import re
import typing
from collections.abc import Mapping
from decimal import Decimal

import re2

from clarion.webhooks import limits

_MISSING = object()
_RE2_MAX_MEM = 1 << 20  # per compiled pattern; RE2's default is 8 MiB
_PYTHON_ONLY_REGEX = re.compile(
    r"\(\?P[<=]|\(\?#|\\[ZAbB]?[gNu]|\(\?[aLu]"
    # Python syntax PostgreSQL cannot compile (an error there stops dispatch for every hook) or
    # reads differently: atomic groups, possessive quantifiers, conditional groups, scoped or
    # m/s/a/L/u inline flags, \b and \B (backspace and backslash there), POSIX classes inside
    # brackets ([[:alpha:]] is a set of characters in Python), and {,n}.
    r"|\(\?>|(?<!\\)[*+?}]\+|\(\?\(|\(\?[aiLmsux-]*[aLmsu]|\(\?[aiLmsux-]+:"
    r"|\\[bB]|\[[^\]\\]*\[[:=.]|(?<!\\)\{,"
)


class Matcher:
    op: str = ""

    def to_json(self) -> dict[str, typing.Any]:
        raise NotImplementedError

    def test(self, present: bool, value: typing.Any) -> bool:
        raise NotImplementedError

    def __and__(self, other: Matcher) -> Matcher:
        return And(self, other)

    def __or__(self, other: Matcher) -> Matcher:
        return Or(self, other)

    def __invert__(self) -> Matcher:
        return Not(self)

    def __eq__(self, other: object) -> bool:
        # durian's matchers compared with ==; here that compares matchers, not values.
        return isinstance(other, Matcher) and self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash(repr(self.to_json()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_json()!r})"


class Any_(Matcher):
    """Matches anything, even a field that is absent."""

    op = "any"

    def to_json(self) -> dict[str, typing.Any]:
        return {"op": "any"}

    def test(self, present: bool, value: typing.Any) -> bool:
        return True

    def __repr__(self) -> str:
        return "Any()"


class _Valued(Matcher):
    def __init__(self, value: typing.Any) -> None:
        self.value = value

    def to_json(self) -> dict[str, typing.Any]:
        return {"op": self.op, "value": self.value}

    def test(self, present: bool, value: typing.Any) -> bool:
        return present and self.check(value)

    def check(self, value: typing.Any) -> bool:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.value!r})"


class Is(_Valued):
    """Strict equality."""

    op = "is"

    def check(self, value: typing.Any) -> bool:
        return json_equal(value, self.value)


class _Text(_Valued):
    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"{type(self).__name__} takes a string, not {type(value).__name__}")
        super().__init__(value)

    def check(self, value: typing.Any) -> bool:
        return isinstance(value, str) and self.check_text(value)

    def check_text(self, value: str) -> bool:
        raise NotImplementedError


class Startswith(_Text):
    op = "startswith"

    def check_text(self, value: str) -> bool:
        return value.startswith(self.value)


class Endswith(_Text):
    op = "endswith"

    def check_text(self, value: str) -> bool:
        return value.endswith(self.value)


class Like(_Text):
    """A regular expression, searched anywhere in the string (anchor it with ^ and $)."""

    op = "like"

    def __init__(self, value: str) -> None:
        super().__init__(value)
        limits.check_pattern(value)
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"Like({value!r}) is not a valid regular expression: {exc}") from None
        if _PYTHON_ONLY_REGEX.search(value):
            raise ValueError(
                f"Like({value!r}) uses syntax only Python's re knows, or that PostgreSQL reads "
                "differently (named groups, comments, \\N, \\u, \\g, \\b, \\B, atomic groups, "
                "possessive quantifiers, inline a/L/m/s/u flags, [[:class:]], {,n}); filters "
                "must also run in the database"
            )
        self._re = _linear(value)

    def check_text(self, value: str) -> bool:
        return self._re.search(value) is not None


@functools.lru_cache(maxsize=1024)
def _linear(pattern: str) -> typing.Any:
    """The pattern compiled by RE2, whose matching time is linear in the input: a tenant's
    filter can never backtrack for seconds while the worker holds the GIL (Python's ``re``
    did, freezing every connection of the process). RE2 refuses what needs backtracking
    (back-references, look-around), which PostgreSQL's engine would also run slowly.

    RE2's own reading is PostgreSQL's: "." matches a newline (``dot_nl``), "$" is the very end
    of the string, and \\d \\s \\w are ASCII classes."""
    options = re2.Options()
    options.dot_nl = True
    options.log_errors = False
    options.max_mem = _RE2_MAX_MEM
    try:
        return re2.compile(_re2_anchors(pattern), options)
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
        raise ValueError(
            f"Like({pattern!r}) cannot be matched in linear time ({reason}): back-references "
            "and look-around are not supported, and the compiled pattern must fit "
            f"{_RE2_MAX_MEM // 1024} KiB") from None


def _re2_anchors(pattern: str) -> str:
    r"""``\Z`` (the end of the string, in PostgreSQL and Python) as RE2 spells it: ``\z``."""
    out = []
    i, in_class = 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            pair = pattern[i:i + 2]
            out.append("\\z" if pair == "\\Z" and not in_class else pair)
            i += 2
            continue
        if in_class:
            in_class = c != "]" or pattern[i - 1] == "["
        elif c == "[":
            in_class = True
        out.append(c)
        i += 1
    return "".join(out)


class Contains(_Valued):
    """A substring of a string, or an element of a list."""

    op = "contains"

    def check(self, value: typing.Any) -> bool:
        if isinstance(value, str):
            return isinstance(self.value, str) and self.value in value
        if isinstance(value, list):
            return any(json_equal(v, self.value) for v in value)
        return False


class In(Matcher):
    """The value is one of the given values."""

    op = "in"

    def __init__(self, *values: typing.Any) -> None:
        if len(values) == 1 and isinstance(values[0], list | tuple | set | frozenset):
            values = tuple(values[0])
        self.values = list(values)

    def to_json(self) -> dict[str, typing.Any]:
        return {"op": "in", "values": self.values}

    def test(self, present: bool, value: typing.Any) -> bool:
        return present and any(json_equal(value, v) for v in self.values)


class _Compare(_Valued):
    def __init__(self, value: typing.Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise TypeError(f"{type(self).__name__} compares numbers or strings")
        super().__init__(value)

    def check(self, value: typing.Any) -> bool:
        if isinstance(value, bool):
            return False
        if isinstance(value, int | float) and isinstance(self.value, int | float):
            if _mixed(value, self.value):
                return self.compare(_as_written(value), _as_written(self.value))
            return self.compare(value, self.value)
        if isinstance(value, str) and isinstance(self.value, str):
            return self.compare(value, self.value)
        return False

    def compare(self, a: typing.Any, b: typing.Any) -> bool:
        raise NotImplementedError


class Gt(_Compare):
    op = "gt"

    def compare(self, a: typing.Any, b: typing.Any) -> bool:
        return bool(a > b)


class Gte(_Compare):
    op = "gte"

    def compare(self, a: typing.Any, b: typing.Any) -> bool:
        return bool(a >= b)


class Lt(_Compare):
    op = "lt"

    def compare(self, a: typing.Any, b: typing.Any) -> bool:
        return bool(a < b)


class Lte(_Compare):
    op = "lte"

    def compare(self, a: typing.Any, b: typing.Any) -> bool:
        return bool(a <= b)


class Exists(Matcher):
    """The field is present (``Exists(False)``: absent). A null value is present."""

    op = "exists"

    def __init__(self, value: bool = True) -> None:
        self.value = bool(value)

    def to_json(self) -> dict[str, typing.Any]:
        return {"op": "exists", "value": self.value}

    def test(self, present: bool, value: typing.Any) -> bool:
        return present is self.value


class And(Matcher):
    op = "and"

    def __init__(self, *args: Matcher) -> None:
        self.args = [as_matcher(a) for a in args]

    def to_json(self) -> dict[str, typing.Any]:
        return {"op": self.op, "args": [a.to_json() for a in self.args]}

    def test(self, present: bool, value: typing.Any) -> bool:
        return all(a.test(present, value) for a in self.args)


class Or(And):
    op = "or"

    def test(self, present: bool, value: typing.Any) -> bool:
        return any(a.test(present, value) for a in self.args)


class Not(Matcher):
    op = "not"

    def __init__(self, arg: Matcher) -> None:
        self.arg = as_matcher(arg)

    def to_json(self) -> dict[str, typing.Any]:
        return {"op": "not", "arg": self.arg.to_json()}

    def test(self, present: bool, value: typing.Any) -> bool:
        return not self.arg.test(present, value)


class Fields(Matcher):
    """Conditions on the fields of a nested object (durian's deep matching)."""

    op = "fields"

    def __init__(self, conditions: Mapping[str, typing.Any]) -> None:
        self.conditions = compile_filter(conditions)

    def to_json(self) -> dict[str, typing.Any]:
        return {"op": "fields", "match": {k: m.to_json() for k, m in self.conditions.items()}}

    def test(self, present: bool, value: typing.Any) -> bool:
        return present and isinstance(value, dict) and matches(self.conditions, value)


# The durian name is ``Any``; the class is ``Any_`` only so typing.Any stays usable here.
Any = Any_

_OPS: dict[str, type[Matcher]] = {
    cls.op: cls for cls in (Any_, Is, Startswith, Endswith, Like, Contains, In, Gt, Gte, Lt,
                            Lte, Exists, And, Or, Not, Fields)
}


def as_matcher(value: typing.Any) -> Matcher:
    """A matcher as given, a dict as nested field conditions, anything else as ``Is(value)``."""
    if isinstance(value, Matcher):
        return value
    if isinstance(value, dict):
        return Fields(value)
    return Is(value)


def compile_filter(conditions: Mapping[str, typing.Any]) -> dict[str, Matcher]:
    return {str(k): as_matcher(v) for k, v in conditions.items()}


_MAX_DEPTH = 64  # stored filters are bounded at 8 levels; this guards the stack, not policy


def from_json(spec: Mapping[str, typing.Any], _depth: int = 0) -> Matcher:
    """Rebuild a matcher from its stored form; ValueError names what is wrong."""
    if not isinstance(spec, Mapping) or "op" not in spec:
        raise ValueError(f"a matcher is an object with an 'op', not {spec!r:.200}")
    if _depth > _MAX_DEPTH:
        raise ValueError(f"matchers nested more than {_MAX_DEPTH} levels deep")
    op = spec["op"]
    cls = _OPS.get(op) if isinstance(op, str) else None
    if cls is None:
        raise ValueError(f"unknown matcher op {op!r}; known: {', '.join(sorted(_OPS))}")
    try:
        if cls is Any_:
            return Any_()
        if cls is In:
            return In(list(spec["values"]))
        if cls is Exists:
            return Exists(spec.get("value", True))
        if cls in (And, Or):
            return cls(*(from_json(a, _depth + 1) for a in spec["args"]))
        if cls is Not:
            return Not(from_json(spec["arg"], _depth + 1))
        if cls is Fields:
            conditions = spec["match"]
            if not isinstance(conditions, Mapping):
                raise ValueError(f"matcher 'fields' needs an object, not {conditions!r:.200}")
            return Fields({k: from_json(v, _depth + 1) for k, v in conditions.items()})
        return cls(spec["value"])  # type: ignore[call-arg]
    except KeyError as exc:
        raise ValueError(f"matcher {op!r} needs {exc.args[0]!r}") from None
    except (TypeError, AttributeError) as exc:
        raise ValueError(str(exc)) from None


def filter_from_json(stored: Mapping[str, typing.Any]) -> dict[str, Matcher]:
    return {k: from_json(v) for k, v in stored.items()}


def filter_to_json(conditions: Mapping[str, Matcher]) -> dict[str, typing.Any]:
    return {k: m.to_json() for k, m in conditions.items()}


def matches(conditions: Mapping[str, Matcher], data: Mapping[str, typing.Any]) -> bool:
    for name, matcher in conditions.items():
        value = data.get(name, _MISSING)
        if not matcher.test(value is not _MISSING, None if value is _MISSING else value):
            return False
    return True


def matches_json(stored: Mapping[str, typing.Any], data: Mapping[str, typing.Any]) -> bool:
    return matches(filter_from_json(stored), data)


def _as_written(value: typing.Any) -> typing.Any:
    """A number as JSON carries it (and PostgreSQL compares it): a float by its shortest repr,
    so that 1e23 equals 100000000000000000000000 and not the binary float's exact value."""
    if isinstance(value, float) and math.isfinite(value):
        return Decimal(repr(value))
    return value


def _mixed(a: typing.Any, b: typing.Any) -> bool:
    """An int and a float (not bools): compared as written, not by binary value."""
    return isinstance(a, int | float) and isinstance(b, int | float) and type(a) is not type(b)


def json_equal(a: typing.Any, b: typing.Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if _mixed(a, b):
        return bool(_as_written(a) == _as_written(b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    return bool(a == b)


__all__ = [
    "And", "Any", "Contains", "Endswith", "Exists", "Fields", "Gt", "Gte", "In", "Is", "Like",
    "Lt", "Lte", "Matcher", "Not", "Or", "Startswith", "matches",
]
