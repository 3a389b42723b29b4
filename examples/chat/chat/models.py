"""Rooms and the messages said in them: the database is the record, the hub only carries."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models

ROOM_NAME_MAX = 50
TEXT_MAX = 1000


class Room(models.Model):  # type: ignore[misc]  # Django ships no types
    name = models.SlugField(max_length=ROOM_NAME_MAX, unique=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return str(self.name)

    @property
    def channel(self) -> str:
        """The hub channel of this room (namespace ``room``, configured by ``runchat``)."""
        return f"room:{self.name}"


class Message(models.Model):  # type: ignore[misc]
    room = models.ForeignKey(Room, related_name="messages", on_delete=models.CASCADE)
    author = models.ForeignKey(settings.AUTH_USER_MODEL, related_name="chat_messages",
                               on_delete=models.CASCADE)
    text = models.TextField(max_length=TEXT_MAX)
    sent = models.DateTimeField(auto_now_add=True)

    class Meta:
        # The id is the order: the page sorts by it, live or loaded.
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.author}: {self.text[:40]}"

    def as_json(self) -> dict[str, Any]:
        """What the page shows, and what is published to the room's channel."""
        return {"id": self.pk, "room": self.room.name, "user": self.author.get_username(),
                "text": self.text, "sent": self.sent.isoformat()}
