"""``clarion.django.proxy``: Django views that answer the hub's proxy requests.

``path("clarion/", include("clarion.django.proxy.urls"))`` serves connect, refresh, subscribe,
publish, sub_refresh and rpc in Centrifugo's proxy shapes. Connections are authenticated by
the Django session the browser's cookie names (the hub forwards it), subscriptions by
permission functions per channel pattern (:mod:`~clarion.django.proxy.permissions`),
publications by forms or serializers (:mod:`~clarion.django.proxy.publishing`), and RPC calls
go to registered functions (:mod:`~clarion.django.proxy.rpc`). Settings ``CLARION["PROXY"]``.
A page then needs no token and no ticket: ``new Centrifuge(url)`` is enough.
See docs/topics/django-proxy.md.
"""

from __future__ import annotations

from . import permissions, publishing, rpc
from .calls import Call

__all__ = ["Call", "permissions", "publishing", "rpc"]
