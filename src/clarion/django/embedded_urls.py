"""URLs of the built-in configuration (:mod:`clarion.django.embedded`): everything under
``/webhooks/``: the API and dashboard, sign-in, and the dashboard's static files."""

from __future__ import annotations

from pathlib import Path

from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path
from django.views.static import serve

STATIC = Path(__file__).parent / "static"

urlpatterns = [
    path("webhooks/accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("webhooks/accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    re_path(r"^webhooks/static/(?P<path>.*)$", serve, {"document_root": STATIC}),
    path("webhooks/", include("clarion.django.urls")),
]
