"""Who may subscribe to which channel: a permission function per channel pattern.

::

    from clarion.django.proxy import permissions

    @permissions.register("chat:*")
    def can_join(call):
        room = call.channel.partition(":")[2]
        return Membership.objects.filter(user=call.user, room__slug=room).exists()

or ``CLARION["PROXY"]["PERMISSIONS"] = {"chat:*": "chat.realtime.can_join"}``. Register in a
module your ``AppConfig.ready()`` imports (a decorator in a module nothing imports registers
nothing, and every subscription is refused).

A function gets a :class:`~clarion.django.proxy.calls.Call` (``user``, ``channel``, ``data``
the client sent with the subscription, ``request``) and returns:

* ``True``: allowed;
* ``False`` or ``None``: refused, error 103 "permission denied" (``None`` too, so a function
  that forgets to return refuses rather than allows);
* a dict: allowed, with fields of Centrifugo's SubscribeResult: ``info`` (channel info in
  presence and publications), ``data`` (sent to the client with the subscribe reply),
  ``expire_at`` (Unix seconds; default now + ``SUBSCRIBE_TTL``), ``override``, ``b64info``,
  ``b64data``.

It may raise :class:`clarion.errors.ReplyError` (its code and message go to the client; use
400-1999 for your own) or :class:`clarion.errors.Disconnect` (4000-4999). A channel no pattern
matches is refused. The same function answers ``sub_refresh``: the subscription lasts while it
still allows, and the connect proxy uses it for the channels a client asks for at connect.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, overload

from ._patterns import PatternTable
from .calls import Call

__all__ = ["Permission", "allowed", "patterns", "register", "unregister"]

Permission = Callable[[Call], Any]

RESULT_KEYS = frozenset({"info", "b64info", "data", "b64data", "override", "expire_at"})

_table: PatternTable[Permission] = PatternTable("PERMISSIONS", lambda target: target)


@overload
def register(pattern: str) -> Callable[[Permission], Permission]: ...
@overload
def register(pattern: str, function: Permission) -> Permission: ...


def register(pattern: str, function: Permission | None = None) -> Any:
    """Make ``function`` decide subscriptions to channels matching ``pattern`` (a glob).
    Used bare it is a decorator. ValueError when ``pattern`` is registered already."""
    if function is None:
        def decorator(fn: Permission) -> Permission:
            _table.add(pattern, fn)
            return fn
        return decorator
    _table.add(pattern, function)
    return function


def unregister(pattern: str) -> None:
    """Forget a pattern registered in code (KeyError when it is not)."""
    _table.remove(pattern)


def patterns() -> list[str]:
    """Every pattern, from code and from ``CLARION["PROXY"]["PERMISSIONS"]``."""
    return _table.patterns()


def allowed(call: Call) -> dict[str, Any] | None:
    """The subscribe result fields when ``call.channel`` is allowed, None when refused."""
    function = _table.find(call.channel)
    if function is None:
        return None
    answer = function(call)
    if answer is True:
        return {}
    if answer is False or answer is None:
        return None
    if isinstance(answer, Mapping):
        unknown = set(answer) - RESULT_KEYS
        if unknown:
            raise TypeError(f"permission {_name(function)} for {call.channel!r} returned "
                            f"unknown keys {sorted(unknown)}; known: {sorted(RESULT_KEYS)}")
        return dict(answer)
    raise TypeError(f"permission {_name(function)} for {call.channel!r} returned "
                    f"{type(answer).__name__}; expected True, False or a dict")


def _name(function: Any) -> str:
    return getattr(function, "__qualname__", repr(function))
