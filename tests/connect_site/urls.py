"""URLs of the connect test site (see settings.py's docstring; keep them stable)."""

from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.urls import include, path, re_path

from connect_site import seed_views


@login_required
def profile(request, webfinger=""):
    from connect_site.pumpapp.models import PumpModel

    row = PumpModel.objects.filter(webfinger=webfinger).first() if webfinger else None
    return HttpResponse(f"profile {webfinger} token={'yes' if row and row.token else 'no'}",
                        content_type="text/plain")


def error(request):
    return HttpResponse("invalid request", status=400, content_type="text/plain")


urlpatterns = [
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/", include("clarion.django.connect.urls")),
    path("pump/<str:webfinger>/", seed_views.pump_view, name="seed_pump"),
    re_path(r"^oauth/authorize/?$", seed_views.authorize_view, name="seed_authorize"),
    path("profile", profile),
    path("profile/", profile),
    path("profile/<str:webfinger>", profile),
    path("error", error),
    # The webhook tests' URLs too: when this module's tests run first in a suite, these
    # settings are the whole process's (tests/test_django_connect.py's docstring).
    path("", include("webhook_apps.urls")),
]
