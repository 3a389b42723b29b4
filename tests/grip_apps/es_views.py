"""django-eventstream in GRIP mode: the events view comes from django_eventstream.urls; this
view sends an event with ``send_event`` (stored by DjangoModelStorage, published to the proxy)."""

from __future__ import annotations

import json

from django.core.serializers.json import DjangoJSONEncoder
from django.http import HttpRequest, HttpResponse, HttpResponseBase, HttpResponseNotAllowed
from django_eventstream import send_event


def send(request: HttpRequest) -> HttpResponseBase:
    """POST ``channel``, ``text``: ``send_event(channel, "message", {"text": text})``, published
    before the answer (async_publish=False) so that the caller knows the proxy has it."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    channel = request.POST["channel"]
    send_event(channel, "message", {"text": request.POST["text"]}, async_publish=False)
    return HttpResponse("Ok\n")


def store(request: HttpRequest) -> HttpResponseBase:
    """POST ``channel``, ``text``: store the event like ``send_event`` but publish nothing, as
    if the publish to the proxy had been lost: a proxy finds the gap from the next item's
    ``prev-id`` and recovers through the hold's ``Grip-Link: <...>; rel=next``."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    from django_eventstream.utils import get_storage

    # as send_event does: the data is JSON-encoded first (the storage encodes it again)
    data = json.dumps({"text": request.POST["text"]}, cls=DjangoJSONEncoder)
    get_storage().append_event(request.POST["channel"], "message", data)
    return HttpResponse("Ok\n")
