"""``path("clarion/", include("clarion.django.proxy.urls"))``: the six proxy endpoints.

| path | name | hub option (Centrifugo's proxy) |
|---|---|---|
| ``connect/`` | ``clarion_proxy:connect`` | connect |
| ``refresh/`` | ``clarion_proxy:refresh`` | refresh |
| ``subscribe/`` | ``clarion_proxy:subscribe`` | subscribe |
| ``publish/`` | ``clarion_proxy:publish`` | publish |
| ``sub_refresh/`` | ``clarion_proxy:sub_refresh`` | sub_refresh |
| ``rpc/`` | ``clarion_proxy:rpc`` | rpc |
"""

from __future__ import annotations

from django.urls import path

from . import views

app_name = "clarion_proxy"

urlpatterns = [
    path("connect/", views.connect, name="connect"),
    path("refresh/", views.refresh, name="refresh"),
    path("subscribe/", views.subscribe, name="subscribe"),
    path("publish/", views.publish, name="publish"),
    path("sub_refresh/", views.sub_refresh, name="sub_refresh"),
    path("rpc/", views.rpc_call, name="rpc"),
]
