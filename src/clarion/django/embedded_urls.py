"""URLs of the built-in configuration (:mod:`clarion.django.embedded`): everything under
``/webhooks/``: the API and the dashboard (with its own sign-in pages), and static files."""

from __future__ import annotations

from pathlib import Path

from django.urls import include, path, re_path
from django.views.static import serve

STATIC = Path(__file__).parent / "static"

urlpatterns = [
    re_path(r"^webhooks/static/(?P<path>.*)$", serve, {"document_root": STATIC}),
    path("webhooks/", include("clarion.django.urls")),
]
