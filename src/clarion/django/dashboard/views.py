"""The dashboard's views. Routes are in :mod:`clarion.django.urls` (namespace ``clarion``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db.models import Count, Max, Q
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse, reverse_lazy
from django.views.decorators.http import require_http_methods

from clarion.django import encryption
from clarion.django import forms as f
from clarion.django.api.http import sees_all
from clarion.django.conf import webhook_settings
from clarion.django.hooks import NotRegistered, hooks
from clarion.django.models import ApiKey, Delivery, Listener
from clarion.errors import DecryptionError

PER_PAGE = 50
EXCERPT = 300  # characters of a response body shown in the attempts table
_STYLESHEET = Path(__file__).parent.parent / "static" / "clarion" / "dashboard.css"
# The secret is kept in the session between the POST that makes it and the page that shows
# it, and removed there: it is shown once, and a reload does not POST again. It is encrypted
# there too, as the session table is as readable in a database dump as the listener table.
_NEW_SECRET = "clarion_new_secret"
_NEW_KEY = "clarion_new_api_key"

View = Callable[..., HttpResponse]


def view(*methods: str) -> Callable[[View], View]:
    """A signed-in view answering only ``methods`` (405 otherwise). Changes are POSTs, and
    Django's CSRF middleware checks their token."""
    def wrap(func: View) -> View:
        guarded = require_http_methods(list(methods))(func)
        return cast(View, login_required(guarded, login_url=reverse_lazy("clarion:login")))

    return wrap


def _reveal(stored: str | None) -> str | None:
    # Made under a key removed since (a rotation between the POST and the page): the value is
    # lost, not the page; a new secret or key can be made again.
    try:
        return encryption.decrypt(stored) if stored else None
    except DecryptionError:
        return None


def _db() -> str:
    return webhook_settings().DATABASE


def _listeners(request: HttpRequest) -> Any:
    rows = Listener.objects.using(_db())
    return rows if sees_all(request.user) else rows.filter(owner_id=request.user.pk)


def _listener(request: HttpRequest, pk: int) -> Any:
    return get_object_or_404(_listeners(request), pk=pk)


def _to_listener(pk: int) -> HttpResponseRedirect:
    return HttpResponseRedirect(reverse("clarion:listener", args=[pk]))


@view("GET")
def listeners(request: HttpRequest) -> HttpResponse:
    failed = Q(deliveries__status=Delivery.Status.FAILED)
    rows = _listeners(request).select_related("owner").annotate(
        failures=Count("deliveries", filter=failed),
        last_failure_at=Max("deliveries__ended_at", filter=failed),
        pending=Count("deliveries", filter=Q(deliveries__status=Delivery.Status.PENDING)),
    ).order_by("-id")
    page = Paginator(rows, PER_PAGE).get_page(request.GET.get("page"))
    return render(request, "clarion/listeners.html",
                  {"page": page, "sees_all": sees_all(request.user)})


@view("GET")
def select_hook(request: HttpRequest) -> HttpResponse:
    return render(request, "clarion/select_hook.html", {"form": f.SelectHookForm()})


@view("GET", "POST")
def create(request: HttpRequest) -> HttpResponse:
    """durian's second step: ``?type=`` names the event type; one filter row per field."""
    name = request.GET.get("type") or request.POST.get("type") or ""
    try:
        hook = hooks.get_hook(name)
    except NotRegistered:
        messages.error(request, f"Pick an event type ({name!r} is not registered).")
        return HttpResponseRedirect(reverse("clarion:select-hook"))
    data = request.POST if request.method == "POST" else None
    form = f.ListenerForm(data)
    rows = f.match_rows(hook, data)
    if data is not None and form.is_valid() and all(r.is_valid() for r in rows):
        options = {k: v for k, v in form.cleaned_data.items() if k != "url"}
        try:
            listener = hook.listener(url=form.cleaned_data["url"]).match(
                **f.conditions(rows)).save(owner_id=request.user.pk, **options)
        except (ValueError, ValidationError) as exc:
            form.add_error(None, str(exc))
        else:
            request.session[_NEW_SECRET] = {"id": listener.pk,
                                            "secret": encryption.encrypt(listener.secret)}
            messages.success(request, "Listener created.")
            return _to_listener(listener.pk)
    return render(request, "clarion/create.html",
                  {"hook": hook, "form": form, "rows": rows, "value_help": f.VALUE_HELP})


@view("GET")
def listener(request: HttpRequest, pk: int) -> HttpResponse:
    row = _listener(request, pk)
    secret = None
    shown = request.session.get(_NEW_SECRET)
    if shown and shown.get("id") == row.pk:
        secret = _reveal(shown["secret"])
        del request.session[_NEW_SECRET]
    deliveries = Delivery.objects.using(_db()).filter(listener=row).select_related(
        "event").prefetch_related("attempt_log").order_by("-id")
    status = request.GET.get("status")
    if status in Delivery.Status.values:
        deliveries = deliveries.filter(status=status)
    page = Paginator(deliveries, PER_PAGE).get_page(request.GET.get("page"))
    return render(request, "clarion/listener.html", {
        "listener": row, "secret": secret, "page": page, "status": status,
        "statuses": Delivery.Status.values, "excerpt": EXCERPT,
        "recover_form": f.RecoverForm(),
    })


@view("POST")
def rotate_secret(request: HttpRequest, pk: int) -> HttpResponse:
    row = _listener(request, pk)
    request.session[_NEW_SECRET] = {"id": row.pk,
                                    "secret": encryption.encrypt(row.rotate_secret())}
    messages.success(request, "New secret made; the old one keeps signing for the grace "
                              "period.")
    return _to_listener(pk)


@view("POST")
def enable(request: HttpRequest, pk: int) -> HttpResponse:
    _listener(request, pk).enable()
    messages.success(request, "Listener enabled.")
    return _to_listener(pk)


@view("POST")
def disable(request: HttpRequest, pk: int) -> HttpResponse:
    _listener(request, pk).disable("disabled on the dashboard")
    messages.success(request, "Listener disabled.")
    return _to_listener(pk)


@view("POST")
def recover(request: HttpRequest, pk: int) -> HttpResponse:
    row = _listener(request, pk)
    form = f.RecoverForm(request.POST)
    if not form.is_valid():
        messages.error(request, f"Recover: {form.errors.as_text()}")
        return _to_listener(pk)
    try:
        count = row.recover(form.cleaned_data["since"])
    except ValueError as exc:
        messages.error(request, f"Recover: {exc}")
    else:
        messages.success(request, f"{count} failed deliveries will be sent again.")
    return _to_listener(pk)


@view("POST")
def delete(request: HttpRequest, pk: int) -> HttpResponse:
    _listener(request, pk).delete()
    messages.success(request, "Listener deleted.")
    return HttpResponseRedirect(reverse("clarion:listeners"))


@view("POST")
def resend(request: HttpRequest, pk: int) -> HttpResponse:
    delivery = Delivery.objects.using(_db()).filter(pk=pk).select_related("listener").first()
    if delivery is None or not _listeners(request).filter(pk=delivery.listener_id).exists():
        raise Http404("no such delivery")
    delivery.resend()
    messages.success(request, f"Delivery {pk} will be sent again now.")
    return _to_listener(delivery.listener_id)


@view("GET", "POST")
def api_keys(request: HttpRequest) -> HttpResponse:
    """Your own API keys (staff too: a key acts as its owner)."""
    form = f.ApiKeyForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        _, raw = ApiKey.issue(request.user, form.cleaned_data["name"])
        request.session[_NEW_KEY] = encryption.encrypt(raw)
        return HttpResponseRedirect(reverse("clarion:api-keys"))
    keys = ApiKey.objects.filter(owner_id=request.user.pk).order_by("-id")
    return render(request, "clarion/api_keys.html",
                  {"form": form, "keys": keys,
                   "new_key": _reveal(request.session.pop(_NEW_KEY, None))})


@view("POST")
def revoke_key(request: HttpRequest, pk: int) -> HttpResponse:
    updated = ApiKey.objects.filter(pk=pk, owner_id=request.user.pk).update(revoked=True)
    if not updated:
        raise Http404("no such key")
    messages.success(request, "API key revoked.")
    return HttpResponseRedirect(reverse("clarion:api-keys"))


def stylesheet(request: HttpRequest) -> HttpResponse:
    """The stylesheet, served here so the dashboard needs no static-files set-up (it is also
    under ``static/clarion/`` for projects that collect static files)."""
    response = HttpResponse(_STYLESHEET.read_bytes(), content_type="text/css; charset=utf-8")
    response["Cache-Control"] = "public, max-age=3600"
    return response
