"""Django admin for the webhook tables. Secrets never appear: not in lists, not in forms (the
signing secret is rotated by an action and shown on the dashboard); API keys show their prefix
and hash only. Events, deliveries and attempts are a log: read-only."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

from django.contrib import admin, messages

from clarion.django.models import ApiKey, Attempt, Delivery, Event, Listener

F = TypeVar("F", bound=Callable[..., Any])


def action(description: str) -> Callable[[F], F]:
    """``admin.action``, typed (Django ships no type information)."""
    return cast(Callable[[F], F], admin.action(description=description))


class ReadOnly(admin.ModelAdmin):  # type: ignore[misc]
    def has_add_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False


@admin.register(Listener)
class ListenerAdmin(admin.ModelAdmin):  # type: ignore[misc]
    list_display = ("id", "hook", "url", "owner", "active", "disabled_reason", "created_at")
    list_filter = ("active", "hook", "fifo")
    search_fields = ("url", "hook", "description", "owner__username")
    raw_id_fields = ("owner",)
    exclude = ("secret", "previous_secrets")
    readonly_fields = ("disabled_at", "created_at", "updated_at")
    actions = ("enable_listeners", "disable_listeners", "rotate_secrets")

    @action("Enable selected listeners")
    def enable_listeners(self, request: Any, queryset: Any) -> None:
        for listener in queryset:
            listener.enable()
        self.message_user(request, f"{len(queryset)} listeners enabled.", messages.SUCCESS)

    @action("Disable selected listeners")
    def disable_listeners(self, request: Any, queryset: Any) -> None:
        for listener in queryset:
            listener.disable("disabled in the admin")
        self.message_user(request, f"{len(queryset)} listeners disabled.", messages.SUCCESS)

    @action("Rotate the signing secrets of selected listeners")
    def rotate_secrets(self, request: Any, queryset: Any) -> None:
        # The new secrets are not shown here (an admin page is no place to read them): their
        # owners see them on the dashboard's rotate, or through the API.
        for listener in queryset:
            listener.rotate_secret()
        self.message_user(request, f"{len(queryset)} secrets rotated; the old ones keep signing "
                                   "for the grace period.", messages.SUCCESS)

    def save_model(self, request: Any, obj: Any, form: Any, change: bool) -> None:
        if not obj.secret:  # added here: the form has no secret field
            from clarion.django.conf import webhook_settings
            from clarion.webhooks.signing import generate_secret

            obj.secret = generate_secret(webhook_settings().SECRET_KIND)  # type: ignore[arg-type]
        super().save_model(request, obj, form, change)


@admin.register(Event)
class EventAdmin(ReadOnly):
    list_display = ("id", "msg_id", "hook", "owner", "created_at", "dispatched_at")
    list_filter = ("hook",)
    search_fields = ("msg_id", "hook")
    date_hierarchy = "created_at"


class AttemptInline(admin.TabularInline):  # type: ignore[misc]
    model = Attempt
    extra = 0
    can_delete = False
    fields = ("number", "manual", "started_at", "duration_ms", "outcome", "status_code",
              "error", "response_body")
    readonly_fields = fields

    def has_add_permission(self, request: Any, obj: Any = None) -> bool:
        return False


@admin.register(Delivery)
class DeliveryAdmin(ReadOnly):
    list_display = ("id", "event", "listener", "status", "attempts", "last_status_code",
                    "created_at", "ended_at")
    list_filter = ("status",)
    search_fields = ("event__msg_id", "listener__url")
    list_select_related = ("event", "listener")
    raw_id_fields = ("event", "listener")
    inlines = (AttemptInline,)
    actions = ("resend",)

    @action("Resend selected deliveries")
    def resend(self, request: Any, queryset: Any) -> None:
        for delivery in queryset:
            delivery.resend()
        self.message_user(request, f"{len(queryset)} deliveries will be sent again.",
                          messages.SUCCESS)


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):  # type: ignore[misc]
    list_display = ("prefix", "name", "owner", "created_at", "last_used_at", "revoked")
    list_filter = ("revoked",)
    search_fields = ("prefix", "name", "owner__username")
    fields = ("owner", "name", "prefix", "key_hash", "created_at", "last_used_at", "revoked")
    readonly_fields = ("owner", "prefix", "key_hash", "created_at", "last_used_at")

    def has_add_permission(self, request: Any, obj: Any = None) -> bool:
        return False  # keys are issued on the dashboard, where the key is shown once
