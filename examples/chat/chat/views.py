"""Pages and the JSON the room page talks to.

The database is the record of what was said; the hub only carries it. A message is saved and
then published to ``room:<name>`` when the transaction commits, so nobody sees a message that
was rolled back, and a page that missed some (offline longer than the hub keeps history, or
loaded just before a message committed) asks ``GET …/messages/?after=<id>`` for the rest.
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
        latest = list(room.messages.select_related("author", "room")
                      .order_by("-id")[:PAGE_HISTORY])
        context.update(room=room, page={
            "room": room.name,
            "channel": room.channel,
            "me": self.request.user.get_username(),
            "messages": [m.as_json() for m in reversed(latest)],
            "textMax": TEXT_MAX,
        })
        return context


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
