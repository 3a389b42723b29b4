"""Pages and the JSON the room page talks to.

The database is the record of what was said; the hub carries it and keeps the recent part. A
message is saved and then published to ``room:<name>`` when the transaction commits, so nobody
sees a message that was rolled back. A page joining a room gets the recent messages from the
hub's history (``realtime.history``), and a page that reconnects recovers what it missed from
the same history (clarion.js does it). The database is read only for what the hub no longer
has: messages older than its history, or all of them after the hub lost its history; a page
whose recovery failed asks ``GET …/messages/?after=<id>`` for those.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from django import forms
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import UserCreationForm
from django.contrib.auth.mixins import LoginRequiredMixin
from django.db import transaction
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.decorators import decorator_from_middleware, method_decorator
from django.views.decorators.http import require_http_methods
from django.views.generic import TemplateView

from chat.models import ROOM_NAME_MAX, TEXT_MAX, Message, Room
from clarion.django import realtime
from clarion.django.tickets import RealtimeTicketMiddleware
from clarion.errors import HubError

log = logging.getLogger("chat")

PAGE_HISTORY = 50  # messages rendered with the room page
PAGE_SIZE = 100  # at most this many per GET of …/messages/


class RoomForm(forms.Form):  # type: ignore[misc]
    name = forms.SlugField(max_length=ROOM_NAME_MAX, label="Room",
                           help_text="Letters, digits, - and _.")


@login_required  # type: ignore[untyped-decorator]  # Django ships no types
def index(request: HttpRequest) -> HttpResponse:
    form = RoomForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        return redirect("room", name=form.cleaned_data["name"].lower())
    rooms = Room.objects.annotate(count=Count("messages"))
    return render(request, "chat/index.html", {"form": form, "rooms": rooms})


def signup(request: HttpRequest) -> HttpResponse:
    form = UserCreationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect("index")
    return render(request, "registration/signup.html", {"form": form})


class RoomView(LoginRequiredMixin, TemplateView):  # type: ignore[misc]
    """The room page. ``RealtimeTicketMiddleware`` puts a one-time ticket for the user in the
    context (``realtime_ticket``); the page opens its first connection with it."""

    template_name = "chat/room.html"

    @method_decorator(decorator_from_middleware(RealtimeTicketMiddleware))  # type: ignore[untyped-decorator]
    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        return super().dispatch(request, *args, **kwargs)

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context: dict[str, Any] = super().get_context_data(**kwargs)
        name = str(kwargs["name"]).lower()
        if len(name) > ROOM_NAME_MAX:
            from django.http import Http404

            raise Http404(f"room names have at most {ROOM_NAME_MAX} characters")
        room, _ = Room.objects.get_or_create(name=name)
        messages, position = recent_messages(room)
        context.update(room=room, page={
            "room": room.name,
            "channel": room.channel,
            "me": self.request.user.get_username(),
            "messages": messages,
            # Where the hub's stream was when the history was read: the page asks the hub for
            # anything published after it and before its subscription began.
            "position": position,
            "textMax": TEXT_MAX,
        })
        return context


def recent_messages(room: Room) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The last PAGE_HISTORY messages of ``room``, oldest first, each with ``via`` saying where
    it came from, and the hub's stream position (None when the hub was not reachable).

    They come from the hub's history of the room's channel. When it holds fewer (a room quiet
    for longer than ``history_ttl``, or a hub that lost its history: restarted on the memory
    broker, ``history_remove``), the older ones come from the database.
    """
    from_hub: list[dict[str, Any]] = []
    position: dict[str, Any] | None = None
    try:
        history = realtime.history(room.channel, limit=PAGE_HISTORY, reverse=True)
    except HubError as exc:
        log.warning("history of %s unavailable, reading the database: %s", room.channel, exc)
    else:
        position = {"epoch": history.epoch, "offset": history.offset}
        from_hub = [{**p.data, "via": "history"} for p in reversed(history.publications)
                    if isinstance(p.data, dict) and isinstance(p.data.get("id"), int)]
    missing = PAGE_HISTORY - len(from_hub)
    if missing <= 0:
        return from_hub, position
    older = room.messages.select_related("author", "room").order_by("-id")
    if from_hub:
        older = older.filter(id__lt=min(m["id"] for m in from_hub))
    from_db = [{**m.as_json(), "via": "database"} for m in reversed(older[:missing])]
    return from_db + from_hub, position


def _error(status: int, message: str, **extra: Any) -> JsonResponse:
    return JsonResponse({"error": message, **extra}, status=status)


@require_http_methods(["GET", "POST"])  # type: ignore[untyped-decorator]
def messages(request: HttpRequest, name: str) -> JsonResponse:
    """GET ``?after=<id>``: up to PAGE_SIZE messages after that id, oldest first.
    POST ``{"text": "…"}``: save a message; it is published to the room after commit."""
    if not request.user.is_authenticated:
        return _error(401, "log in first")
    room = get_object_or_404(Room, name=name.lower())
    if request.method == "GET":
        try:
            after = int(request.GET.get("after", "0"))
        except ValueError:
            return _error(400, "after must be a message id (an integer)")
        rows = (room.messages.select_related("author", "room").filter(id__gt=after)
                .order_by("id")[:PAGE_SIZE])
        return JsonResponse({"messages": [m.as_json() for m in rows], "limit": PAGE_SIZE})
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        return _error(400, 'the body must be JSON like {"text": "hello"}')
    text = body.get("text") if isinstance(body, dict) else None
    if not isinstance(text, str) or not text.strip():
        return _error(422, "text is required", field="text")
    text = text.strip()
    if len(text) > TEXT_MAX:
        return _error(422, f"text is longer than {TEXT_MAX} characters", field="text")
    with transaction.atomic():
        message = Message.objects.create(room=room, author=request.user, text=text)
        # Sent when the transaction commits, keyed by the row so a retried publication
        # is delivered once.
        realtime.publish(room.channel, message.as_json(),
                         idempotency_key=f"chat-message-{message.pk}")
    return JsonResponse(message.as_json(), status=201)


@require_http_methods(["GET"])  # type: ignore[untyped-decorator]
def presence(request: HttpRequest, name: str) -> JsonResponse:
    """Who is in the room now, from the hub: ``{"clients": {client id: username}}``."""
    if not request.user.is_authenticated:
        return _error(401, "log in first")
    room = get_object_or_404(Room, name=name.lower())
    try:
        clients = realtime.presence(room.channel)
    except HubError as exc:
        log.warning("presence of %s unavailable: %s", room.channel, exc)
        return _error(503, "the realtime hub is not reachable; try again")
    return JsonResponse({"clients": {
        client: (info.conn_info or {}).get("username", info.user)
        for client, info in clients.items()
    }})
