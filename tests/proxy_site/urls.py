from django.urls import include, path

from . import views

urlpatterns = [
    path("clarion/", include("clarion.django.proxy.urls")),
    path("", views.page, name="page"),
    path("signup/", views.signup),
    path("logout/", views.logout_view),
    path("deactivate/", views.deactivate),
    path("ping/", views.ping),
    path("centrifuge.js", views.sdk),
]
