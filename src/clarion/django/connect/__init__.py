"""``clarion.django.connect``: users connect their accounts on their own servers (pump.io,
Mastodon, any OAuth 2 server with published metadata), found with WebFinger, and the site acts
for them. The successor of PyPump's ``WebPump``.

Add ``"clarion.django.connect"`` to ``INSTALLED_APPS`` (app label ``clarion_connect``), run
``migrate``, and ``path("accounts/", include("clarion.django.connect.urls"))``. Settings are in
``CLARION["CONNECT"]``. See docs/topics/connect.md.
"""

from __future__ import annotations

from typing import Any

__all__ = ["WebPump"]


def __getattr__(name: str) -> Any:
    # Lazy: importing the package (as INSTALLED_APPS does) must not import models before the
    # app registry is ready.
    if name == "WebPump":
        from .webpump import WebPump

        return WebPump
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
