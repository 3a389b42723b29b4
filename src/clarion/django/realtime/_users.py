"""Who a credential (ticket or token) is for: a Django user, the anonymous user, or an id."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def identity(user: Any, info: Any) -> tuple[str, Any]:
    """``(user id, connection info)``. A Django user gives ``str(user.pk)`` and
    ``{"username": user.get_username()}`` merged with ``info`` (a dict; its keys win); the
    anonymous user gives ``""`` (the hub's anonymous connection) and ``info`` as it is; a str
    or int is the id itself."""
    if isinstance(user, bool):
        raise TypeError("user must be a Django user or a user id, not a bool")
    if isinstance(user, str | int):
        return str(user), info
    if getattr(user, "is_anonymous", False):
        return "", info
    pk = getattr(user, "pk", None)
    if pk is None or not hasattr(user, "get_username"):
        raise TypeError(f"user must be a saved Django user or a user id, not {user!r}")
    base: dict[str, Any] = {"username": user.get_username()}
    if info is None:
        return str(pk), base
    if not isinstance(info, Mapping):
        raise TypeError(f"info for a Django user must be a dict (merged with its username), "
                        f"not {type(info).__name__}")
    return str(pk), {**base, **info}
