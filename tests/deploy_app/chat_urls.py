"""examples/chat's URLs and /whoami (what Django sees of a request; the example has no such
page, and the nginx test checks the proxy's headers with it)."""

from __future__ import annotations

from chatsite.urls import urlpatterns as chat_urlpatterns
from django.urls import path

from . import views

urlpatterns = [path("whoami", views.whoami), *chat_urlpatterns]
