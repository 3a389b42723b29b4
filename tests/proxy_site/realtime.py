"""What the site allows, in code (decorators) and in settings (CLARION["PROXY"]): the cases the
tests and the bench exercise."""

from __future__ import annotations

import time
from typing import Any

from django import forms

from clarion.django.proxy import Call, permissions, publishing, rpc
from clarion.errors import Disconnect, ReplyError


def connect_info(call: Call) -> dict[str, Any] | None:
    if call.user.get_username().startswith("banned"):
        raise Disconnect(4503, "banned")
    return {"info": {"site": "proxy"}, "data": {"hello": call.user.get_username()}}


@permissions.register("chat:*")
def chat(call: Call) -> bool:
    return bool(call.user.is_authenticated)


@permissions.register("public:*")
def public(call: Call) -> bool:
    return True  # anonymous connections too, where the settings allow them


@permissions.register("vip:*")
def vip(call: Call) -> Any:
    if not call.user.get_username().startswith("vip"):
        return False
    return {"info": {"vip": True}, "data": {"welcome": call.channel}}


@permissions.register("custom:*")
def custom(call: Call) -> bool:
    raise ReplyError(1403, "members only")


@permissions.register("kick:*")
def kick(call: Call) -> bool:
    raise Disconnect(4509, "kicked")


@permissions.register("boom:*")
def boom(call: Call) -> bool:
    raise RuntimeError("the permission function is broken")


def anyone_logged_in(call: Call) -> bool:
    return bool(call.user.is_authenticated)


class MessageForm(forms.Form):
    text = forms.CharField(max_length=200)  # strips surrounding whitespace
    urgent = forms.BooleanField(required=False)


class NewsForm(forms.Form):
    headline = forms.CharField(max_length=80)


publishing.register("chat:*", MessageForm, rewrite=True)


class NoteSerializer:
    """Shaped like a REST framework serializer: is_valid(), errors, validated_data."""

    def __init__(self, data: Any, author: str) -> None:
        self.initial_data = data
        self.author = author
        self.errors: dict[str, list[str]] = {}
        self.validated_data: dict[str, Any] = {}

    def is_valid(self) -> bool:
        data = self.initial_data if isinstance(self.initial_data, dict) else {}
        body = data.get("body")
        if not isinstance(body, str) or not body:
            self.errors["body"] = ["A non-empty string is required."]
        tags = data.get("tags", [])
        if not isinstance(tags, list):
            self.errors["tags"] = ["Expected a list."]
        if self.errors:
            return False
        self.validated_data = {"body": body, "tags": tags, "author": self.author}
        return True


@publishing.register("notes:*", rewrite=True)
def note(call: Call) -> Any:
    if call.channel == "notes:readonly":
        return False
    return NoteSerializer(call.data, call.user.get_username())


@rpc.method("whoami")
def whoami(call: Call) -> dict[str, Any]:
    return {"user": call.user.get_username(), "id": call.user_id, "echo": call.data,
            "transport": call.transport}


@rpc.method("fail")
def fail(call: Call) -> None:
    raise ReplyError(1422, "cannot do that")


@rpc.method("boom")
def boom_rpc(call: Call) -> None:
    raise RuntimeError("the rpc method is broken")


@rpc.method("unencodable")
def unencodable(call: Call) -> object:
    return object()  # not JSON: the project's bug, logged like an exception


@rpc.method("public.ping", login_required=False)
def public_ping(call: Call) -> str:
    return "pong"


def server_time(call: Call) -> dict[str, float]:
    return {"time": time.time()}
