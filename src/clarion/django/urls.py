"""Routes of the webhook app: the REST Hooks API under ``api/`` and the dashboard at the root.

Mount it under a prefix of your choice, e.g. ``path("webhooks/", include("clarion.django.urls"))``;
names are in the ``clarion`` namespace (``reverse("clarion:listeners")``).
"""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path, reverse_lazy

from clarion.django.api import views as api
from clarion.django.api.http import endpoint
from clarion.django.api.openapi import openapi
from clarion.django.dashboard import views as dash
from clarion.django.security import protect_patterns

app_name = "clarion"

api_patterns = [
    path("api/hooks", endpoint(get=api.list_hooks), name="api-hooks"),
    path("api/subscriptions", endpoint(get=api.list_subscriptions, post=api.create_subscription),
         name="api-subscriptions"),
    path("api/subscriptions/<int:pk>",
         endpoint(get=api.get_subscription, patch=api.update_subscription,
                  delete=api.delete_subscription), name="api-subscription"),
    path("api/subscriptions/<int:pk>/rotate-secret", endpoint(post=api.rotate_secret),
         name="api-rotate-secret"),
    path("api/subscriptions/<int:pk>/enable", endpoint(post=api.enable), name="api-enable"),
    path("api/subscriptions/<int:pk>/disable", endpoint(post=api.disable), name="api-disable"),
    path("api/subscriptions/<int:pk>/recover", endpoint(post=api.recover), name="api-recover"),
    path("api/subscriptions/<int:pk>/deliveries", endpoint(get=api.list_deliveries),
         name="api-deliveries"),
    path("api/deliveries/<int:pk>", endpoint(get=api.get_delivery), name="api-delivery"),
    path("api/deliveries/<int:pk>/resend", endpoint(post=api.resend), name="api-resend"),
    path("api/events", endpoint(post=api.send_event), name="api-events"),
    path("api/openapi.json", endpoint(public=True, get=openapi), name="api-openapi"),
]

dashboard_patterns = [
    path("", dash.listeners, name="listeners"),
    path("new/", dash.select_hook, name="select-hook"),
    path("create/", dash.create, name="create"),
    path("listeners/<int:pk>/", dash.listener, name="listener"),
    path("listeners/<int:pk>/rotate-secret/", dash.rotate_secret, name="rotate-secret"),
    path("listeners/<int:pk>/enable/", dash.enable, name="enable"),
    path("listeners/<int:pk>/disable/", dash.disable, name="disable"),
    path("listeners/<int:pk>/recover/", dash.recover, name="recover"),
    path("listeners/<int:pk>/delete/", dash.delete, name="delete"),
    path("deliveries/<int:pk>/resend/", dash.resend, name="resend"),
    path("keys/", dash.api_keys, name="api-keys"),
    path("keys/<int:pk>/revoke/", dash.revoke_key, name="revoke-key"),
    path("login/", auth_views.LoginView.as_view(
        template_name="clarion/login.html", redirect_authenticated_user=True,
        next_page=reverse_lazy("clarion:listeners")), name="login"),
    path("logout/", auth_views.LogoutView.as_view(next_page=reverse_lazy("clarion:login")),
         name="logout"),
    path("dashboard.css", dash.stylesheet, name="stylesheet"),
]

# Every route sends the anti-framing, no-sniff and no-store headers (clarion.django.security).
urlpatterns = protect_patterns(api_patterns + dashboard_patterns)
