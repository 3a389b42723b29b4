"""``path("accounts/", include("clarion.django.connect.urls"))``.

====================================  ==========================================================
``connect/``                          the connect form (GET), start with its address (POST)
``connect/<webfinger>/``              start connecting ``alice@pump.example`` (GET)
``connect/callback/``                 where servers send users back
``connect/email/``                    the address of a connection paused for the email check
``connect/email/<token>/``            the emailed link: resumes the paused connection
``connect/accounts/``                 the user's connected accounts
``connect/<pk>/disconnect/``          disconnect one (POST, CSRF)
====================================  ==========================================================
"""

from __future__ import annotations

from django.urls import path

from clarion.django.security import protect_patterns

from . import views

app_name = "clarion_connect"

urlpatterns = protect_patterns([
    path("connect/", views.start, name="start"),
    path("connect/callback/", views.callback, name="callback"),
    path("connect/accounts/", views.accounts, name="accounts"),
    path("connect/email/", views.email, name="email"),
    path("connect/email/<str:token>/", views.confirm_email, name="confirm_email"),
    path("connect/<int:pk>/disconnect/", views.disconnect, name="disconnect"),
    path("connect/<str:webfinger>/", views.start, name="start_address"),
])
