"""durian's hook API on a transactional outbox.

A hook is a named kind of event; listeners subscribe a URL to it, optionally filtered on the
fields the hook provides. ``send`` does not talk to the network: it writes one
:class:`~clarion.django.models.Event` row, in the current transaction of the database the change
was made in, and returns. If that transaction rolls back, the event never existed; once it
commits, a worker (``manage.py clarion_worker``) delivers it to every matching listener, at least
once, signed per Standard Webhooks.

    >>> class PersonHook(ModelHook):
    ...     name = "person"
    ...     model = Person
    ...     signal = signals.post_save
    ...     provides_args = ["name", "address"]
    >>> hooks.register(PersonHook)
    >>> PersonHook().listener(url="https://where.joe/is/listening").match(name="Joe").save()

A hook that names a ``channel`` (a format string over its ``provides_args``, or a
``get_channel(fields)`` method) is also a realtime publication: the same outbox row is
published to that channel by the worker, with the ``webhook-id`` as idempotency key and the
webhook's body as data (see ``clarion.django.outbox``).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models, router, transaction

from clarion.django import match as _match
from clarion.django.conf import webhook_settings
from clarion.django.outbox import check_channel, check_template
from clarion.errors import PayloadTooLarge, WebhookError
from clarion.webhooks.signing import generate_secret

_NAME = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

# Called after a transaction that wrote events commits: an embedded worker in the same process
# registers here to wake at once (PostgreSQL workers elsewhere are woken by NOTIFY instead).
_wakers: list[Callable[[], None]] = []


class AlreadyRegistered(WebhookError):
    """A hook with this name is registered already."""


class NotRegistered(WebhookError):
    """No hook has this name."""


def new_message_id() -> str:
    """``msg_`` + a ULID: time-ordered, unique, and free of the ``.`` the spec forbids."""
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "msg_" + "".join(reversed(chars))


class ListenerBuilder:
    """``hook.listener(url=...).match(field=...).save()``."""

    def __init__(self, hook: Hook, url: str | None, options: dict[str, Any]) -> None:
        self.hook = hook
        self.url = url
        self.options = options
        self.conditions: dict[str, _match.Matcher] = {}

    def match(self, **conditions: Any) -> ListenerBuilder:
        fields = self.hook.filter_fields()
        for name in conditions:
            if fields is not None and name not in fields:
                raise ValueError(
                    f"hook {self.hook.name!r} provides no field {name!r} to match on; "
                    f"it provides {sorted(fields)}"
                )
        self.conditions.update(_match.compile_filter(conditions))
        return self

    def save(self, **options: Any) -> Any:
        from clarion.django.models import Listener

        opts = {**self.options, **options}
        using = opts.pop("using", None)
        url = opts.pop("url", self.url)
        if not url:
            raise ValueError("a listener needs a url")
        conf = webhook_settings()
        conf.policy().parse_url(url)  # AddressRejected says what is wrong with it
        listener = Listener(
            hook=self.hook.name,
            url=url,
            match=_match.filter_to_json(self.conditions),
            secret=opts.pop("secret", None) or generate_secret(conf.SECRET_KIND),  # type: ignore[arg-type]
            **opts,
        )
        listener.full_clean(exclude=["url", "secret"])
        listener.save(using=using or conf.DATABASE)
        return listener


class Hook:
    """A kind of event. Subclass it or instantiate it with keyword attributes."""

    name: str = ""
    verbose_name: str = ""
    provides_args: Iterable[str] | None = None
    retry_schedule: Iterable[float] | None = None  # overrides the global schedule for this hook
    owner_field: str | None = None  # a field (or attribute) naming the user who owns the event
    # A channel the event is also published to: a format string over provides_args
    # ("orders:{customer_id}"); or override get_channel(fields).
    channel: str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # A template naming a field the hook does not provide fails where the class is
        # written, not at the first send.
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("channel") is not None or "provides_args" in cls.__dict__:
            cls._check_channel(cls.channel, cls.provides_args, cls.__qualname__)

    @staticmethod
    def _check_channel(channel: str | None, provides: Iterable[str] | None, who: str) -> None:
        if channel is None:
            return
        check_template(channel, None if provides is None else set(provides),
                       where=f"hook {who}")

    def __init__(self, **attrs: Any) -> None:
        for key, value in attrs.items():
            if key == "async":
                continue  # durian's flag: every send is asynchronous now (through the outbox)
            if not hasattr(type(self), key) and key not in ("name", "model", "signal"):
                raise TypeError(f"{type(self).__name__} has no attribute {key!r}")
            setattr(self, key, value)
        if not self.name:
            self.name = f"{type(self).__module__}.{type(self).__qualname__}".lower()
        if not _NAME.match(self.name):
            raise ValueError(
                f"hook name {self.name!r} must be dot-separated parts of letters, digits and _"
            )
        self._check_channel(self.channel, self.provides_args, repr(self.name))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    # listeners
    def listener(self, url: str | None = None, **options: Any) -> ListenerBuilder:
        return ListenerBuilder(self, url, options)

    def filter_fields(self) -> set[str] | None:
        return None if self.provides_args is None else set(self.provides_args)

    def listeners(self) -> Any:
        from clarion.django.models import Listener

        return Listener.objects.using(webhook_settings().DATABASE).filter(hook=self.name)

    # sending
    def prepare_payload(self, sender: Any, **fields: Any) -> dict[str, Any]:
        """The fields that leave the application: only ``provides_args`` when it is set."""
        allowed = self.filter_fields()
        if allowed is None:
            return dict(fields)
        return {k: v for k, v in fields.items() if k in allowed}

    def build_body(self, data: Mapping[str, Any], msg_id: str, timestamp: datetime) -> Any:
        """The JSON document listeners receive; the Standard Webhooks shape by default.
        Return ``data`` itself for durian's flat shape."""
        return {
            "type": self.name,
            "timestamp": timestamp.isoformat().replace("+00:00", "Z"),
            "data": data,
        }

    def get_channel(self, fields: Mapping[str, Any]) -> str | None:
        """The channel this event is published to (None: none): ``channel`` formatted with
        the event's fields. Override it for channels a template cannot say."""
        if self.channel is None:
            return None
        try:
            return self.channel.format_map(fields)
        except (KeyError, IndexError, AttributeError, ValueError) as exc:
            raise WebhookError(
                f"hook {self.name!r}: channel template {self.channel!r} cannot be formatted "
                f"with this event's fields ({type(exc).__name__}: {exc}); send every field it "
                f"names") from None

    def owner_for(self, sender: Any, fields: Mapping[str, Any]) -> Any:
        if self.owner_field is None:
            return None
        return fields.get(self.owner_field)

    def send(self, sender: Any = None, *, using: str | None = None, **fields: Any) -> Any:
        """Write the event to the outbox in the current transaction; returns the Event row."""
        from clarion.django.models import Event

        conf = webhook_settings()
        owner = self.owner_for(sender, fields)
        prepared = self.prepare_payload(sender, **fields)
        channel = self.get_channel(prepared)
        if channel is not None:
            check_channel(channel, where=f"hook {self.name!r}")
        encoded = json.dumps(prepared, cls=DjangoJSONEncoder)
        data = json.loads(encoded)
        msg_id = new_message_id()
        now = datetime.now(UTC)
        body = json.dumps(self.build_body(data, msg_id, now), cls=DjangoJSONEncoder,
                          separators=(",", ":"), ensure_ascii=False)
        size = len(body.encode())
        if size > conf.MAX_PAYLOAD:
            raise PayloadTooLarge(
                f"hook {self.name!r}: the body is {size} bytes, over MAX_PAYLOAD "
                f"({conf.MAX_PAYLOAD}); send a link to large content instead"
            )
        db = using or conf.DATABASE
        schedule = list(self.retry_schedule) if self.retry_schedule is not None else None
        if "\\u0000" in encoded:
            # PostgreSQL's jsonb cannot hold NUL: filters see U+FFFD; the body keeps the NUL.
            data = json.loads(encoded.replace("\\u0000", "\\ufffd"))
        event = Event.objects.using(db).create(
            msg_id=msg_id, hook=self.name, payload=body, data=data, retry_schedule=schedule,
            owner_id=owner.pk if isinstance(owner, models.Model) else owner,
            created_at=now, channel=channel or "",
        )
        if _wakers:
            transaction.on_commit(_wake, using=db)
        return event


def wake_after_commit(using: str) -> None:
    """Wake in-process workers once the current transaction of ``using`` commits."""
    if _wakers:
        transaction.on_commit(_wake, using=using)


def _wake() -> None:
    for waker in list(_wakers):
        waker()


class SignalHook(Hook):
    """A hook fired by a Django signal: ``SignalHook(name=..., signal=...).connect(sender)``."""

    signal: Any = None

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self._uid = f"clarion.hook:{self.name}"

    def connect(self, sender: Any = None) -> None:
        if self.signal is None:
            raise ValueError(f"hook {self.name!r} has no signal to connect to")
        self.signal.connect(self._receive, sender=sender, weak=False,
                            dispatch_uid=(self._uid, id(sender)))

    def disconnect(self, sender: Any = None) -> None:
        if self.signal is not None:
            self.signal.disconnect(sender=sender, dispatch_uid=(self._uid, id(sender)))

    def _receive(self, sender: Any, **kwargs: Any) -> None:
        kwargs.pop("signal", None)
        self.send(sender, **kwargs)


class ModelHook(SignalHook):
    """A hook fired by a model's signal (``post_save``, ``post_delete``, …).

    The event carries the ``provides_args`` fields of the instance (all concrete fields but
    the primary key if unset, as in durian: set it, so that fields such as a secret stay
    home). It is written in the same database, and transaction, as the change."""

    model: Any = None

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        if self.model is None:
            raise ValueError(f"ModelHook {self.name!r} needs a model")
        if self.provides_args is None:
            self.provides_args = [
                f.name for f in self.model._meta.concrete_fields if not f.primary_key
            ]
            self._check_channel(self.channel, self.provides_args, repr(self.name))

    def connect(self, sender: Any = None) -> None:
        super().connect(sender or self.model)

    def disconnect(self, sender: Any = None) -> None:
        super().disconnect(sender or self.model)

    def _receive(self, sender: Any, **kwargs: Any) -> None:
        instance = kwargs.get("instance")
        if instance is None or kwargs.get("raw"):
            return  # fixtures (raw saves) are not events
        using = kwargs.get("using") or router.db_for_write(type(instance))
        self.send(sender, using=using, **self.instance_fields(instance))

    def instance_fields(self, instance: Any) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        for name in self.provides_args or ():
            try:
                field = instance._meta.get_field(name)
            except Exception:  # noqa: BLE001  # a property or attribute, not a model field
                fields[name] = getattr(instance, name)
                continue
            fields[name] = getattr(instance, field.attname)
        if self.owner_field and self.owner_field not in fields:
            try:  # the attname (user_id) routes the event without loading the user
                attname = instance._meta.get_field(self.owner_field).attname
            except Exception:  # noqa: BLE001
                attname = self.owner_field
            fields[self.owner_field] = getattr(instance, attname, None)
        return fields


class HookRegistry:
    """The registry of hooks by name: ``hooks.register(PersonHook)``."""

    def __init__(self) -> None:
        self._hooks: dict[str, Hook] = {}

    def register(self, hook: type[Hook] | Hook) -> Hook:
        instance = hook() if isinstance(hook, type) else hook
        if instance.name in self._hooks:
            raise AlreadyRegistered(f"a hook named {instance.name!r} is already registered")
        self._hooks[instance.name] = instance
        if isinstance(instance, SignalHook) and instance.signal is not None:
            instance.connect()
        return instance

    def unregister(self, hook: type[Hook] | Hook | str) -> None:
        name = hook if isinstance(hook, str) else hook.name
        if isinstance(hook, type):
            name = hook().name if not hook.name else str(hook.name)
        instance = self._hooks.pop(name, None)
        if instance is None:
            raise NotRegistered(f"no hook named {name!r} is registered")
        if isinstance(instance, SignalHook) and instance.signal is not None:
            instance.disconnect()

    def get_hook(self, name: str) -> Hook:
        try:
            return self._hooks[name]
        except KeyError:
            raise NotRegistered(f"no hook named {name!r} is registered") from None

    def __contains__(self, name: object) -> bool:
        return name in self._hooks

    def __iter__(self) -> Iterator[Hook]:
        return iter(list(self._hooks.values()))

    def __len__(self) -> int:
        return len(self._hooks)

    def as_choices(self) -> list[tuple[str, str]]:
        return [(h.name, h.verbose_name or h.name) for h in self._hooks.values()]


hooks = HookRegistry()


# Operational events, sent by the worker; listeners subscribe to them like to any hook.
LISTENER_DISABLED = Hook(
    name="clarion.listener.disabled",
    verbose_name="A listener was disabled",
    owner_field="owner",
    provides_args=["listener_id", "hook", "url", "reason"],
)
ATTEMPTS_EXHAUSTED = Hook(
    name="clarion.attempt.exhausted",
    verbose_name="A delivery failed for good",
    owner_field="owner",
    provides_args=["delivery_id", "listener_id", "msg_id", "hook", "url", "attempts",
                   "status_code", "error"],
)
OPERATIONAL = (LISTENER_DISABLED, ATTEMPTS_EXHAUSTED)


# Events of clarion.django.connect (registered by its AppConfig): a user's account on another
# server was connected, disconnected, or had its tokens refreshed. No token ever goes in them.
_ACCOUNT_FIELDS = ["account_id", "user", "server", "handle", "kind", "scopes"]
ACCOUNT_CONNECTED = Hook(
    name="clarion.account.connected",
    verbose_name="An account on another server was connected",
    owner_field="user",
    provides_args=[*_ACCOUNT_FIELDS, "created"],
)
ACCOUNT_DISCONNECTED = Hook(
    name="clarion.account.disconnected",
    verbose_name="A connected account was disconnected",
    owner_field="user",
    provides_args=_ACCOUNT_FIELDS,
)
ACCOUNT_TOKEN_REFRESHED = Hook(
    name="clarion.account.token_refreshed",
    verbose_name="A connected account's tokens were refreshed",
    owner_field="user",
    provides_args=[*_ACCOUNT_FIELDS, "expires_at"],
)
ACCOUNT_EVENTS = (ACCOUNT_CONNECTED, ACCOUNT_DISCONNECTED, ACCOUNT_TOKEN_REFRESHED)
