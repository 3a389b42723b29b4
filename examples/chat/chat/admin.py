from django.contrib import admin

from chat.models import Message, Room


@admin.register(Room)
class RoomAdmin(admin.ModelAdmin):  # type: ignore[misc]
    list_display = ["name", "created"]
    search_fields = ["name"]


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):  # type: ignore[misc]
    list_display = ["room", "author", "text", "sent"]
    list_filter = ["room"]
    raw_id_fields = ["author"]
