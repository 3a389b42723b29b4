"""RPC methods a client calls with ``centrifuge.rpc(method, data)``.

::

    from clarion.django.proxy import rpc

    @rpc.method("rooms.list")
    def rooms(call):
        return [r.slug for r in Room.objects.filter(members=call.user)]

or ``CLARION["PROXY"]["RPC"] = {"rooms.list": "chat.realtime.rooms"}``. The function gets the
:class:`~clarion.django.proxy.calls.Call` (``call.data`` is what the client sent) and returns
any JSON value (encoded as ``DjangoJSONEncoder`` does), which the client receives as the
result's ``data``. It may raise :class:`clarion.errors.ReplyError` (code and message to the
client; use 400-1999 for your own) or :class:`clarion.errors.Disconnect`.

* A name nobody registered: error **104** "method not found" (Centrifugo's code for a method
  that does not exist; 108 "not available" is the hub's own answer when no RPC proxy is
  configured at all).
* An anonymous connection: error **103** "permission denied", unless the method was registered
  with ``login_required=False``.
* Any other exception: logged with its traceback on ``clarion.django.proxy``, and the client
  gets error 100 "internal server error" (temporary), never the exception's text.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, overload

from .calls import Call
from .conf import imported, on_reset, proxy_settings

__all__ = ["Method", "find", "method", "methods", "register", "unregister"]


@dataclass(frozen=True, slots=True)
class Method:
    name: str
    function: Callable[[Call], Any]
    login_required: bool = True


_code: dict[str, Method] = {}
_from_settings: dict[str, Method] | None = None
_lock = threading.Lock()


def register(name: str, function: Callable[[Call], Any], *,
             login_required: bool = True) -> Callable[[Call], Any]:
    """Answer RPC ``name`` with ``function``. ValueError when ``name`` is taken."""
    if not isinstance(name, str):
        raise ValueError(f"an RPC method name must be a string, not {name!r}")
    with _lock:
        if name in _code:
            raise ValueError(f"RPC method {name!r} is registered already "
                             f"({_code[name].function!r}); unregister it first")
        _code[name] = Method(name, function, login_required)
    return function


@overload
def method(name: str, *, login_required: bool = True
           ) -> Callable[[Callable[[Call], Any]], Callable[[Call], Any]]: ...
@overload
def method(name: str, function: Callable[[Call], Any], *,
           login_required: bool = True) -> Callable[[Call], Any]: ...


def method(name: str, function: Callable[[Call], Any] | None = None, *,
           login_required: bool = True) -> Any:
    """``@rpc.method("name")``: the decorator form of :func:`register`."""
    if function is not None:
        return register(name, function, login_required=login_required)

    def decorator(fn: Callable[[Call], Any]) -> Callable[[Call], Any]:
        return register(name, fn, login_required=login_required)
    return decorator


def unregister(name: str) -> None:
    with _lock:
        if _code.pop(name, None) is None:
            raise KeyError(f"RPC method {name!r} is not registered")


def find(name: str) -> Method | None:
    """The method called ``name`` (code first, then settings), or None."""
    found = _code.get(name)
    if found is not None:
        return found
    return _settings_methods().get(name)


def methods() -> list[str]:
    return sorted({*_code, *_settings_methods()})


def _settings_methods() -> dict[str, Method]:
    global _from_settings
    loaded = _from_settings
    if loaded is None:
        loaded = {name: Method(name, imported(path, f"CLARION['PROXY']['RPC'][{name!r}]"))
                  for name, path in proxy_settings().RPC.items()}
        with _lock:
            _from_settings = loaded
    return loaded


def _drop_settings() -> None:
    global _from_settings
    with _lock:
        _from_settings = None


on_reset(_drop_settings)
