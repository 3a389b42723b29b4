from __future__ import annotations

from django.urls import include, path

from . import views

urlpatterns = [
    path("", views.demo_page),
    path("demo/ticket", views.demo_ticket),
    path("whoami", views.whoami),
    path("grip/", include("grip_apps.urls")),
]
