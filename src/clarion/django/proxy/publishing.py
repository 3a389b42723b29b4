"""What clients may publish: a validator per channel pattern, a Django form or anything shaped
like a serializer (``is_valid()``, ``errors``, and ``cleaned_data`` or ``validated_data``).

::

    from clarion.django.proxy import publishing

    publishing.register("chat:*", MessageForm, rewrite=True)   # MessageForm(data=call.data)

    @publishing.register("notes:*", rewrite=True)
    def note(call):
        if not call.user.has_perm("notes.add_note"):
            return False
        return NoteSerializer(data=call.data, context={"request": call.request})

or ``CLARION["PROXY"]["PUBLISH"] = {"chat:*": "chat.forms.MessageForm"}`` (settings entries do
not rewrite). A class is called as ``cls(data=call.data)``, which both Django forms and
serializers accept; a function gets the :class:`~clarion.django.proxy.calls.Call` and returns
``True`` (publish as sent), ``False``/``None`` (refused: 103), or a validator to run.

* Invalid data: error **400** with a message naming each field's problem
  (``"invalid data: text: This field is required."``); data that is not a JSON object where a
  form needs one is invalid too.
* ``rewrite=True``: the validator's ``cleaned_data`` / ``validated_data`` is published instead
  of what the client sent (normalised values, unknown keys dropped), encoded as Django's
  ``DjangoJSONEncoder`` does (dates and decimals as strings).
* A channel no pattern matches is refused (103): the hub only asks for namespaces with the
  publish proxy on, so a missing pattern is a mistake to see, not to let through.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, overload

from django.core.serializers.json import DjangoJSONEncoder

from clarion.errors import ReplyError

from ._patterns import PatternTable
from .calls import Call

__all__ = ["INVALID_DATA", "MAX_MESSAGE", "describe_errors", "outcome", "patterns",
           "register", "unregister"]

INVALID_DATA = 400  # in the 400-1999 range Centrifugo leaves to applications
MAX_MESSAGE = 1000  # characters of the error message a client gets
_NON_FIELD = frozenset({"__all__", "non_field_errors"})


@dataclass(frozen=True, slots=True)
class _Rule:
    target: Callable[..., Any]  # a validator class, or a function of the Call
    rewrite: bool


_table: PatternTable[_Rule] = PatternTable("PUBLISH", lambda target: _Rule(target, False))


@overload
def register(pattern: str, validator: None = None, *,
             rewrite: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]: ...
@overload
def register(pattern: str, validator: Callable[..., Any], *,
             rewrite: bool = False) -> Callable[..., Any]: ...


def register(pattern: str, validator: Callable[..., Any] | None = None, *,
             rewrite: bool = False) -> Any:
    """Validate publications to channels matching ``pattern`` with ``validator`` (a form or
    serializer class, or a function of the call). Bare, a decorator for the function."""
    if validator is None:
        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            _table.add(pattern, _Rule(fn, rewrite))
            return fn
        return decorator
    _table.add(pattern, _Rule(validator, rewrite))
    return validator


def unregister(pattern: str) -> None:
    _table.remove(pattern)


def patterns() -> list[str]:
    return _table.patterns()


def outcome(call: Call) -> dict[str, Any] | None:
    """The publish result (``{}``, or ``{"data": …}`` when rewritten) or None when refused;
    ReplyError(400) for invalid data."""
    rule = _table.find(call.channel)
    if rule is None:
        return None
    if isinstance(rule.target, type):
        validator = rule.target(data=_as_object(call.data))
    else:
        answer = rule.target(call)
        if answer is True:
            return {}
        if answer is False or answer is None:
            return None
        if not callable(getattr(answer, "is_valid", None)):
            raise TypeError(f"publish validator {_name(rule.target)} for {call.channel!r} "
                            f"returned {type(answer).__name__}; expected True, False or an "
                            f"object with is_valid()")
        validator = answer
    if not validator.is_valid():
        raise ReplyError(INVALID_DATA, _clip("invalid data: " + describe_errors(
            validator.errors)))
    if not rule.rewrite:
        return {}
    cleaned = (validator.validated_data if hasattr(validator, "validated_data")
               else validator.cleaned_data)
    try:
        # Through JSON text now, so a value JSON cannot carry (a model instance) fails here,
        # naming the validator, rather than in the response.
        data = json.loads(json.dumps(cleaned, cls=DjangoJSONEncoder))
    except TypeError as exc:
        raise TypeError(f"publish validator {_name(rule.target)} for {call.channel!r}: its "
                        f"cleaned data cannot be published as JSON: {exc}") from exc
    return {"data": data}


def describe_errors(errors: Any) -> str:
    """``field: message; other: message`` from a form's ``errors`` or a serializer's (nested
    dicts and lists), with non-field errors unprefixed."""
    if hasattr(errors, "get_json_data"):  # a form's ErrorDict: messages without markup
        errors = {field: [item["message"] for item in items]
                  for field, items in errors.get_json_data().items()}
    parts: list[str] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                name = str(key)
                walk(prefix if name in _NON_FIELD else
                     (f"{prefix}.{name}" if prefix else name), item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(prefix, item)
        else:
            parts.append(f"{prefix}: {value}" if prefix else str(value))

    walk("", errors)
    return "; ".join(parts) or "rejected"


def _as_object(data: Any) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ReplyError(INVALID_DATA, f"invalid data: expected a JSON object, not "
                                       f"{_json_kind(data)}")
    return data


def _json_kind(value: Any) -> str:
    if isinstance(value, bytes):
        return "binary data"
    if isinstance(value, list):
        return "an array"
    if value is None:
        return "null"
    return {str: "a string", bool: "a boolean"}.get(type(value), "a number")


def _clip(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE - 1] + "…"


def _name(function: Any) -> str:
    return getattr(function, "__qualname__", repr(function))
