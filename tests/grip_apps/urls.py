from django.conf import settings
from django.urls import include, path

from . import views

urlpatterns = [
    path("myendpoint", views.myendpoint),
    path("seed/myendpoint", views.myendpoint_seed),
    path("echo", views.echo),
    path("broadcast", views.broadcast),
    path("longpoll", views.longpoll),
    path("required", views.required),
]

if settings.EVENTSTREAM:
    import django_eventstream

    from . import es_views

    urlpatterns += [
        # channels from the query: /events/?channel=NAME
        path("events/", include(django_eventstream.urls)),
        path("es/send", es_views.send),
        path("es/store", es_views.store),
    ]
