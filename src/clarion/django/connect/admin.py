"""Admin views of the connect models: read-only, and without any secret or token (the fields
are excluded, not just hidden, so they are never rendered into a page)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin

from .models import ConnectedAccount, FlowState, ServerClient


class _ReadOnly(admin.ModelAdmin):  # type: ignore[misc]
    def has_add_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False


@admin.register(ServerClient)
class ServerClientAdmin(_ReadOnly):
    list_display = ["host", "kind", "protocol", "client_id", "registrations", "expires_at",
                    "updated_at"]
    list_filter = ["kind", "protocol"]
    search_fields = ["host"]
    fields = ["host", "kind", "protocol", "redirect_uri", "client_id", "endpoints",
              "registration_client_uri", "registrations", "expires_at", "created_at",
              "updated_at"]
    readonly_fields = fields


@admin.register(ConnectedAccount)
class ConnectedAccountAdmin(_ReadOnly):
    list_display = ["handle", "user", "server", "scopes", "email", "email_verified",
                    "revoked_at", "updated_at"]
    list_filter = ["server__kind", "email_verified"]
    search_fields = ["handle", "email"]
    fields = ["user", "server", "handle", "profile_id", "display_name", "profile_url", "email",
              "email_verified", "scopes", "expires_at", "revoked_at", "created_at",
              "updated_at"]
    readonly_fields = fields


@admin.register(FlowState)
class FlowStateAdmin(_ReadOnly):
    list_display = ["acct", "stage", "user", "created_at", "expires_at", "consumed_at"]
    list_filter = ["stage"]
    fields = ["acct", "stage", "user", "client", "redirect_uri", "email", "created_at",
              "expires_at", "consumed_at"]
    readonly_fields = fields
