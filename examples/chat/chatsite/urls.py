from chat import views
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

urlpatterns = [
    path("", include("chat.urls")),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("signup/", views.signup, name="signup"),
    # POST /ticket/ -> {"status": "ok", "message": "<ticket>"}: what the page asks for when it
    # reconnects (a ticket works once).
    path("", include("clarion.django.tickets.urls")),
    path("admin/", admin.site.urls),
]
