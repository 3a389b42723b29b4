"""The GRIP origin's URLs: the django-grip README views (tests/grip_apps) under /grip/."""

from __future__ import annotations

from django.urls import include, path

urlpatterns = [
    path("grip/", include("grip_apps.urls")),
]
