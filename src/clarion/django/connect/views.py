"""The views of ``clarion.django.connect.urls``.

Each failure of the flow is a page (``clarion/connect/error.html``, with the reason and the
HTTP status that fits: 400 for a bad address or state, 403 for a refusal or another session,
502 when the user's server failed), a log line without secrets, and nothing half-saved.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar, cast

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from clarion.errors import (
    AuthorizationError,
    ConnectError,
    DiscoveryError,
    FetchError,
    RegistrationError,
)

from . import emails
from . import flow as flows
from .conf import connect_settings
from .forms import ConnectForm, EmailForm
from .models import ConnectedAccount, FlowState
from .state import StateError

log = logging.getLogger("clarion.connect")
V = TypeVar("V", bound=Callable[..., HttpResponse])


def _typed(decorator: Any) -> Callable[[V], V]:
    return cast("Callable[[V], V]", decorator)


# Django's decorators, typed for mypy (Django ships no type information).
login = _typed(login_required)
get_only = _typed(require_GET)
post_only = _typed(require_POST)
get_or_post = _typed(require_http_methods(["GET", "POST"]))
PAUSED = "clarion_connect_paused"  # session key: the flow waiting for an email address


def status_for(exc: ConnectError) -> int:
    if isinstance(exc, StateError):
        return exc.status
    if isinstance(exc, AuthorizationError):
        return 403
    if isinstance(exc, DiscoveryError):
        return 400
    if isinstance(exc, FetchError | RegistrationError):
        return 502
    return 502  # the token endpoint failed, a client or token was revoked


def error_page(request: HttpRequest, exc: ConnectError, *, where: str,
               acct: str = "") -> HttpResponse:
    status = status_for(exc)
    reason = flows.reason_of(exc)
    # The reason is written for users and carries no secret; the traceback goes with the
    # server-side failures, whose cause the operator must see.
    log.warning("connect: %s failed (%s, HTTP %s): %s", where, type(exc).__name__, status,
                reason, exc_info=status >= 500)
    return render(request, "clarion/connect/error.html",
                  {"reason": reason, "kind": type(exc).__name__, "status": status,
                   "acct": acct.removeprefix("acct:"), "retry": status != 403 or bool(acct)},
                  status=status)


def _next(request: HttpRequest) -> str:
    value = request.POST.get("next") or request.GET.get("next") or ""
    if value and url_has_allowed_host_and_scheme(value, {request.get_host()},
                                                 require_https=request.is_secure()):
        return str(value)
    return ""


def _done_url(flow: FlowState) -> str:
    if flow.next_url:
        return str(flow.next_url)
    return connect_settings().REDIRECT_URL or reverse("clarion_connect:accounts")


@login
@get_only
def accounts(request: HttpRequest) -> HttpResponse:
    """The user's connected accounts, each with a disconnect button, and the connect form."""
    rows = ConnectedAccount.objects.filter(user=request.user).select_related("server")
    return render(request, "clarion/connect/accounts.html",
                  {"accounts": rows, "form": ConnectForm()})


@login
@get_or_post
def start(request: HttpRequest, webfinger: str | None = None) -> HttpResponse:
    """The connect form. A GET (``connect/``, or ``connect/<webfinger>/`` and ``?address=``,
    which prefill it) only shows it; the POST (CSRF-checked) starts the flow. A GET that started
    one would let any page link a signed-in user's account to an account of the linker's."""
    if request.method != "POST":
        address = webfinger or request.GET.get("address", "")
        form = ConnectForm(initial={"address": address[:320]} if address else None)
        return render(request, "clarion/connect/start.html",
                      {"form": form, "next": _next(request), "confirm": bool(address)})
    form = ConnectForm(request.POST)
    if not form.is_valid():
        return render(request, "clarion/connect/start.html",
                      {"form": form, "next": _next(request)}, status=400)
    address = form.cleaned_data["address"]
    try:
        started = flows.start(request, address, next_url=_next(request))
    except ConnectError as exc:
        return error_page(request, exc, where=f"connecting {address[:320]!r}",
                          acct=address if status_for(exc) >= 500 else "")
    return HttpResponseRedirect(started.url)


@get_only
def callback(request: HttpRequest) -> HttpResponse:
    """Where the server sends the user back (OAuth 2 ``code``/``state``, OAuth 1
    ``oauth_token``/``oauth_verifier``, or an error)."""
    try:
        result = flows.finish(request, request.GET)
    except ConnectError as exc:
        return error_page(request, exc, where="the callback")
    if result.account is None:
        request.session[PAUSED] = result.flow.pk
        return HttpResponseRedirect(reverse("clarion_connect:email"))
    return HttpResponseRedirect(_done_url(result.flow))


@login
@get_or_post
def email(request: HttpRequest) -> HttpResponse:
    """Ask for the address of a paused connection, and mail the confirmation link."""
    pk = request.session.get(PAUSED)
    flow = FlowState.objects.filter(pk=pk, stage="email", user=request.user,
                                    consumed_at__isnull=True).select_related("client").first() \
        if isinstance(pk, int) else None
    if flow is None:
        return error_page(request, StateError("No connection is waiting for an email address "
                                              "in this browser. Start again."),
                          where="the email form")
    form = EmailForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        address = form.cleaned_data["email"]
        try:
            emails.send_link(request, flow, address)
        except ConnectError as exc:
            return error_page(request, exc, where="sending the email link")
        return render(request, "clarion/connect/email_sent.html",
                      {"email": address, "acct": flow.acct.removeprefix("acct:")})
    return render(request, "clarion/connect/email.html",
                  {"form": form, "acct": flow.acct.removeprefix("acct:"),
                   "host": flow.client.host}, status=400 if form.errors else 200)


@get_only
def confirm_email(request: HttpRequest, token: str) -> HttpResponse:
    """The emailed link: resumes the paused connection (no session needed)."""
    try:
        account, _created, flow = emails.confirm(token)
    except ConnectError as exc:
        return error_page(request, exc, where="the email link")
    if request.session.get(PAUSED) == flow.pk:
        del request.session[PAUSED]
    return render(request, "clarion/connect/email_done.html",
                  {"account": account, "next": _done_url(flow)})


@login
@post_only
def disconnect(request: HttpRequest, pk: int) -> HttpResponse:
    account = get_object_or_404(ConnectedAccount.objects.select_related("server", "user"),
                                pk=pk, user=request.user)
    flows.disconnect(account)
    return HttpResponseRedirect(_next(request) or reverse("clarion_connect:accounts"))


