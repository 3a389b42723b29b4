from django.urls import path

from chat import views

urlpatterns = [
    path("", views.index, name="index"),
    path("rooms/<slug:name>/", views.RoomView.as_view(), name="room"),
    path("rooms/<slug:name>/messages/", views.messages, name="room-messages"),
    path("rooms/<slug:name>/presence/", views.presence, name="room-presence"),
]
