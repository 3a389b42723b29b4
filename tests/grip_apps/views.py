# The README views are kept as the README writes them (elif after return).
# ruff: noqa: RET505
"""The django-grip README's example views, plus a long-poll view and a view for
GRIP_PROXY_REQUIRED.  ``grip_apps.grip`` supplies django-grip or clarion.django.grip."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, HttpResponseBase, HttpResponseNotAllowed

from .grip import (
    HttpResponseFormat,
    HttpStreamFormat,
    WebSocketMessageFormat,
    publish,
    set_hold_longpoll,
    set_hold_stream,
    websocket_only,
)

# --- the README's views; only change: django-grip 3 takes the request in set_hold_stream ---------


def myendpoint(request):
    if request.method == 'GET':
        # if the request didn't come through a GRIP proxy, throw 501
        if not request.grip_proxied:
            return HttpResponse('Not Implemented\n', status=501)

        # subscribe every incoming request to a channel in stream mode
        resp = HttpResponse('[stream open]\n')
        set_hold_stream(request, 'test')
        return resp
    elif request.method == 'POST':
        # publish data to subscribers
        data = request.POST['data']
        publish('test', HttpStreamFormat(data + '\n'))
        return HttpResponse('Ok\n')
    else:
        return HttpResponseNotAllowed(['GET', 'POST'])


# decorator means reject non-websocket-related requests. it also means we
#   don't need to return an HttpResponse object. the middleware will take care
#   of that for us.
@websocket_only
def echo(request):
    # since we used the decorator, this will always be a non-None value
    ws = request.wscontext

    # if this is a new connection, accept it and subscribe it to a channel
    if ws.is_opening():
        ws.accept()
        ws.subscribe('test')

    # here we loop over any messages
    while ws.can_recv():
        message = ws.recv()

        # if return value is None, then the connection is closed
        if message is None:
            ws.close()
            break

        # echo the message
        ws.send(message)


def broadcast(request):
    if request.method == 'POST':
        # publish data to all clients that are connected to the echo endpoint
        data = request.POST['data']
        publish('test', WebSocketMessageFormat(data))
        return HttpResponse('Ok\n')
    else:
        return HttpResponseNotAllowed(['POST'])


# --- the README's stream view verbatim, in the old (seed) call style -----------------------------
# set_hold_stream(resp, 'test') is what the README shows; django-grip 3 wants the request
# there (it fails with AttributeError: 'HttpResponse' object has no attribute 'grip').
# clarion.django.grip accepts both; only the clarion implementation is tested with this view.


def myendpoint_seed(request):
    if request.method == 'GET':
        # if the request didn't come through a GRIP proxy, throw 501
        if not request.grip_proxied:
            return HttpResponse('Not Implemented\n', status=501)

        # subscribe every incoming request to a channel in stream mode
        resp = HttpResponse('[stream open]\n')
        set_hold_stream(resp, 'test')
        return resp
    elif request.method == 'POST':
        # publish data to subscribers
        data = request.POST['data']
        publish('test', HttpStreamFormat(data + '\n'))
        return HttpResponse('Ok\n')
    else:
        return HttpResponseNotAllowed(['GET', 'POST'])


# --- long-poll -----------------------------------------------------------------------------------


def longpoll(request: HttpRequest) -> HttpResponseBase:
    """GET holds the request on ``channel`` (query, default "lp") as a long-poll for
    ``timeout`` seconds (query, default 55): the body here is what the client gets when the
    hold times out.  POST ``data`` publishes an HTTP response to the held requests."""
    channel = request.GET.get("channel", "lp")
    if request.method == "GET":
        timeout = int(request.GET.get("timeout", "55"))
        resp = HttpResponse("[timeout]\n", content_type="text/plain")
        resp["X-Origin"] = "initial"
        set_hold_longpoll(request, channel, timeout=timeout)
        return resp
    if request.method == "POST":
        data = request.POST["data"]
        publish(
            channel,
            HttpResponseFormat(
                code=200,
                reason="OK",
                headers={"Content-Type": "text/plain", "X-Origin": "published"},
                body=data + "\n",
            ),
        )
        return HttpResponse("Ok\n")
    return HttpResponseNotAllowed(["GET", "POST"])


# --- GRIP_PROXY_REQUIRED -------------------------------------------------------------------------


def required(request: HttpRequest) -> HttpResponseBase:
    """Holds a stream without looking at ``request.grip_proxied``: with GRIP_PROXY_REQUIRED the
    middleware itself must answer 501 to a request that did not come through the proxy."""
    resp = HttpResponse("[required open]\n")
    set_hold_stream(request, "required")
    return resp
