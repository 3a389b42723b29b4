"""django-eventstream in GRIP mode: the events view comes from django_eventstream.urls; this
view sends an event with ``send_event`` (stored by DjangoModelStorage, published to the proxy)."""

from __future__ import annotations

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
