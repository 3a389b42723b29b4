"""Pure code of the webhook app, without a database or a network: the retry rules, the settings
checks, matchers' stored form, message ids, hook names and the registry."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

import django_env

django_env.configure()

from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.test import override_settings  # noqa: E402

from clarion.django import match as m  # noqa: E402
from clarion.django.conf import WebhookSettings, webhook_settings  # noqa: E402
from clarion.django.hooks import (  # noqa: E402
    AlreadyRegistered,
    Hook,
    HookRegistry,
    NotRegistered,
    hooks,
    new_message_id,
)
from clarion.webhooks.addresses import AddressPolicy  # noqa: E402
from clarion.webhooks.retry import (  # noqa: E402
    DEFAULT_SCHEDULE,
    Outcome,
    RetryPolicy,
    classify,
    parse_retry_after,
)
from clarion.webhooks.sender import Sender  # noqa: E402
from clarion.webhooks.store import Job  # noqa: E402
from clarion.webhooks.transport import Request, Response  # noqa: E402

# -- RetryPolicy.delay ---------------------------------------------------------------------------


def mid() -> float:
    return 0.5  # no jitter: 2 * 0.5 - 1 == 0


def test_delay_follows_the_schedule() -> None:
    policy = RetryPolicy((5, 300, 1800))
    assert policy.max_attempts == 4
    assert policy.delay(1, Outcome.FAILURE, rand=mid) == 5
    assert policy.delay(2, Outcome.FAILURE, rand=mid) == 300
    assert policy.delay(3, Outcome.FAILURE, rand=mid) == 1800
    assert policy.delay(4, Outcome.FAILURE, rand=mid) is None  # exhausted
    assert policy.delay(10, Outcome.FAILURE, rand=mid) is None


def test_default_schedule_is_svix() -> None:
    assert DEFAULT_SCHEDULE == (5, 300, 1800, 7200, 18000, 36000, 36000)
    assert RetryPolicy().max_attempts == 8


def test_success_and_gone_end_the_delivery() -> None:
    policy = RetryPolicy((5, 300))
    assert policy.delay(1, Outcome.SUCCESS, rand=mid) is None
    assert policy.delay(1, Outcome.GONE, rand=mid) is None
    assert policy.delay(1, Outcome.GONE, retry_after=10, rand=mid) is None


@given(st.floats(0, 0.999), st.floats(0, 1), st.integers(1, 3))
def test_jitter_stays_within_bounds(jitter: float, r: float, attempt: int) -> None:
    policy = RetryPolicy((5, 300, 1800), jitter)
    base = policy.schedule[attempt - 1]
    got = policy.delay(attempt, Outcome.FAILURE, rand=lambda: r)
    assert got is not None
    assert base * (1 - jitter) - 1e-9 <= got <= base * (1 + jitter) + 1e-9


def test_jitter_extremes() -> None:
    policy = RetryPolicy((100,), 0.2)
    assert policy.delay(1, Outcome.FAILURE, rand=lambda: 0.0) == pytest.approx(80)
    assert policy.delay(1, Outcome.FAILURE, rand=lambda: 1.0) == pytest.approx(120)
    assert policy.delay(1, Outcome.FAILURE, rand=mid) == pytest.approx(100)


def test_overload_waits_at_least_a_minute() -> None:
    policy = RetryPolicy((5, 300), 0.0)
    assert policy.delay(1, Outcome.OVERLOAD, rand=mid) == 60
    assert policy.delay(2, Outcome.OVERLOAD, rand=mid) == 300  # the schedule is longer already
    assert policy.delay(3, Outcome.OVERLOAD, rand=mid) is None  # overload does not add attempts


def test_retry_after_delays_but_never_hastens() -> None:
    policy = RetryPolicy((5, 300), 0.0)
    assert policy.delay(1, Outcome.FAILURE, retry_after=120, rand=mid) == 120
    assert policy.delay(2, Outcome.FAILURE, retry_after=1, rand=mid) == 300  # not earlier
    assert policy.delay(1, Outcome.OVERLOAD, retry_after=10, rand=mid) == 60  # overload floor
    assert policy.delay(1, Outcome.OVERLOAD, retry_after=90, rand=mid) == 90


def test_retry_after_is_capped_at_ten_hours() -> None:
    policy = RetryPolicy((5,), 0.0)
    assert policy.retry_after_max == 36000
    assert policy.delay(1, Outcome.OVERLOAD, retry_after=10 * 86400, rand=mid) == 36000
    assert policy.delay(1, Outcome.FAILURE, retry_after=36001, rand=mid) == 36000


def test_retry_after_does_not_add_attempts() -> None:
    assert RetryPolicy((5,), 0.0).delay(2, Outcome.OVERLOAD, retry_after=30, rand=mid) is None


def test_from_schedule_keeps_the_rest() -> None:
    base = RetryPolicy((5, 300), 0.1, overload_delay=30, retry_after_max=100)
    assert RetryPolicy.from_schedule(None, base) is base
    other = RetryPolicy.from_schedule([1, 2, 3], base)
    assert other.schedule == (1.0, 2.0, 3.0)
    assert (other.jitter, other.overload_delay, other.retry_after_max) == (0.1, 30, 100)
    assert RetryPolicy.from_schedule([], base).delay(1, Outcome.FAILURE) is None


@pytest.mark.parametrize("kwargs", [
    {"schedule": (5, -1)}, {"schedule": ("5",)}, {"jitter": 1.0}, {"jitter": -0.1},
])
def test_policy_refuses_bad_values(kwargs: dict[str, object]) -> None:
    from clarion.errors import ConfigError

    with pytest.raises(ConfigError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


# -- manual attempts: the Sender gives them no retry -------------------------------------------


class _FakeTransport:
    def __init__(self, status: int, headers: list[tuple[str, str]] | None = None) -> None:
        self.status = status
        self.headers = headers or []
        self.requests: list[Request] = []

    async def send(self, request: Request) -> Response:
        self.requests.append(request)
        return Response(self.status, self.headers, b"", False, "127.0.0.1")

    async def aclose(self) -> None:
        return None


def _job(**kw: object) -> Job:
    from clarion.webhooks.signing import generate_secret

    fields: dict[str, object] = dict(
        delivery_id=1, listener_id=1, attempt=1, message_id="msg_1", hook="h",
        url="http://127.0.0.1:9/x", body=b"{}", secrets=(generate_secret(),),
    )
    fields.update(kw)
    return Job(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("status,outcome", [(500, Outcome.FAILURE), (429, Outcome.OVERLOAD)])
def test_manual_attempt_is_never_retried(status: int, outcome: Outcome) -> None:
    policy = AddressPolicy(["127.0.0.0/8"])
    sender = Sender(_FakeTransport(status), policy, RetryPolicy((1, 2), 0.0))
    auto = asyncio.run(sender.attempt(_job()))
    manual = asyncio.run(sender.attempt(_job(manual=True)))
    assert auto.outcome is manual.outcome is outcome
    assert auto.next_attempt_in is not None
    assert manual.next_attempt_in is None


def test_sender_uses_the_jobs_schedule_and_retry_after() -> None:
    policy = AddressPolicy(["127.0.0.0/8"])
    transport = _FakeTransport(503, [("Retry-After", "40")])
    sender = Sender(transport, policy, RetryPolicy((1, 2), 0.0))
    result = asyncio.run(sender.attempt(_job(schedule=(7.0,))))
    assert result.outcome is Outcome.FAILURE and result.status_code == 503
    assert result.next_attempt_in == 40
    last = asyncio.run(sender.attempt(_job(schedule=(7.0,), attempt=2)))
    assert last.next_attempt_in is None
    # Every attempt is signed with its own timestamp and the event's id.
    headers = dict(transport.requests[0].headers)
    assert headers["webhook-id"] == "msg_1"
    assert headers["webhook-signature"].startswith("v1,")


def test_sender_turns_a_refused_address_into_a_failure() -> None:
    sender = Sender(_FakeTransport(200), AddressPolicy(), RetryPolicy((1,), 0.0))
    result = asyncio.run(sender.attempt(_job()))
    assert result.outcome is Outcome.FAILURE
    assert "127.0.0.1" in result.error and result.status_code is None


# -- classify and Retry-After ------------------------------------------------------------------


@pytest.mark.parametrize("status,expected", [
    (200, Outcome.SUCCESS), (201, Outcome.SUCCESS), (204, Outcome.SUCCESS),
    (299, Outcome.SUCCESS), (300, Outcome.FAILURE), (301, Outcome.FAILURE),
    (302, Outcome.FAILURE), (307, Outcome.FAILURE), (308, Outcome.FAILURE),
    (400, Outcome.FAILURE), (401, Outcome.FAILURE), (404, Outcome.FAILURE),
    (410, Outcome.GONE), (429, Outcome.OVERLOAD), (500, Outcome.FAILURE),
    (501, Outcome.FAILURE), (502, Outcome.OVERLOAD), (503, Outcome.FAILURE),
    (504, Outcome.OVERLOAD), (100, Outcome.FAILURE), (None, Outcome.FAILURE),
])
def test_classify(status: int | None, expected: Outcome) -> None:
    assert classify(status) is expected


@pytest.mark.parametrize("status", [None, 200, 500])
def test_classify_timeout_is_overload(status: int | None) -> None:
    assert classify(status, timed_out=True) is Outcome.OVERLOAD


def test_parse_retry_after() -> None:
    now = time.time()
    assert parse_retry_after("120", now) == 120
    assert parse_retry_after(" 7 ", now) == 7
    assert parse_retry_after("0", now) == 0
    later = datetime.fromtimestamp(int(now) + 300, UTC)
    assert parse_retry_after(format_datetime(later, usegmt=True), now) == pytest.approx(
        300, abs=1.5)
    earlier = datetime.fromtimestamp(now, UTC) - timedelta(hours=1)
    assert parse_retry_after(format_datetime(earlier, usegmt=True), now) == 0
    for garbage in (None, "", "soon", "-5", "1.5", "12abc", "Wed, 99 Foo 2015 07:28:00 GMT",
                    "Wed, 21 Oct 2015 07:28:00"):  # a date without a zone is no HTTP date
        assert parse_retry_after(garbage, now) is None, garbage


# -- settings ------------------------------------------------------------------------------------


def test_settings_defaults() -> None:
    with override_settings(CLARION={}):
        conf = webhook_settings()
    assert conf == WebhookSettings()
    assert conf.TIMEOUT == 15 and conf.MAX_PAYLOAD == 256 * 1024 and conf.SECRET_KIND == "hmac"


def test_settings_read_at_each_use() -> None:
    with override_settings(CLARION={"WEBHOOKS": {"TIMEOUT": 3, "RETRY_SCHEDULE": [1, 2]}}):
        conf = webhook_settings()
    assert conf.TIMEOUT == 3 and conf.RETRY_SCHEDULE == (1, 2)
    assert conf.retry().schedule == (1, 2)


@pytest.mark.parametrize("webhooks,key", [
    ({"TIMEOUTS": 5}, "TIMEOUTS"),
    ({"TIMEOUT": "5"}, "TIMEOUT"),
    ({"TIMEOUT": -1}, "TIMEOUT"),
    ({"RETRY_JITTER": True}, "RETRY_JITTER"),
    ({"DISABLE_AFTER": None}, "DISABLE_AFTER"),
    ({"MAX_PAYLOAD": 0}, "MAX_PAYLOAD"),
    ({"MAX_PAYLOAD": 1.5}, "MAX_PAYLOAD"),
    ({"BATCH": True}, "BATCH"),
    ({"CONCURRENCY": "10"}, "CONCURRENCY"),
    ({"ALLOWED_NETWORKS": "10.0.0.0/8"}, "ALLOWED_NETWORKS"),
    ({"RETRY_SCHEDULE": 5}, "RETRY_SCHEDULE"),
    ({"SECRET_KIND": "rsa"}, "SECRET_KIND"),
])
def test_settings_errors_name_the_key(webhooks: dict[str, object], key: str) -> None:
    with override_settings(CLARION={"WEBHOOKS": webhooks}), \
            pytest.raises(ImproperlyConfigured, match=re.escape(key)):
        webhook_settings()


def test_settings_whole_shape_errors() -> None:
    with override_settings(CLARION=["x"]), pytest.raises(ImproperlyConfigured, match="CLARION"):
        webhook_settings()
    with override_settings(CLARION={"WEBHOOKS": ["x"]}), \
            pytest.raises(ImproperlyConfigured, match="WEBHOOKS"):
        webhook_settings()


def test_settings_bad_networks_and_schedule_fail_when_used() -> None:
    with override_settings(CLARION={"WEBHOOKS": {"ALLOWED_NETWORKS": ["not a network"]}}):
        conf = webhook_settings()
    with pytest.raises(ImproperlyConfigured, match="CLARION"):
        conf.policy()
    with override_settings(CLARION={"WEBHOOKS": {"RETRY_SCHEDULE": [5, -1]}}):
        conf = webhook_settings()
    with pytest.raises(ImproperlyConfigured, match="RETRY_SCHEDULE"):
        conf.retry()
    with override_settings(CLARION={"WEBHOOKS": {"RETRY_JITTER": 1}}):
        conf = webhook_settings()
    with pytest.raises(ImproperlyConfigured, match="RETRY_JITTER"):
        conf.retry()


@pytest.mark.parametrize("webhooks", [
    {"LEASE": "30"}, {"RETENTION": "90 days"}, {"HTTPS_ONLY": "no"}, {"DATABASE": 0},
])
def test_settings_unchecked_keys(webhooks: dict[str, object]) -> None:
    with override_settings(CLARION={"WEBHOOKS": webhooks}), \
            pytest.raises(ImproperlyConfigured, match=re.escape(next(iter(webhooks)))):
        webhook_settings()


# -- matchers: stored form and validation ------------------------------------------------------

ALL_MATCHERS = [
    m.Any(), m.Is("Joe"), m.Is(1), m.Is(1.5), m.Is(True), m.Is(None), m.Is([1, "a"]),
    m.Is({"a": 1}), m.Startswith("J"), m.Endswith("e"), m.Contains("o"), m.Contains(3),
    m.Like("^J.*e$"), m.In("a", 1, None), m.In([1, 2]), m.Gt(3), m.Gte(2.5), m.Lt("m"),
    m.Lte(-1), m.Exists(), m.Exists(False),
    m.Startswith("J") & ~m.Endswith("x"), m.Is(1) | m.Is(2) | m.Gt(10),
    m.Fields({"city": m.Startswith("New"), "zip": {"first": "1"}}),
]


@pytest.mark.parametrize("matcher", ALL_MATCHERS, ids=repr)
def test_matcher_json_round_trip(matcher: m.Matcher) -> None:
    import json

    stored = json.loads(json.dumps(matcher.to_json()))
    again = m.from_json(stored)
    assert again == matcher
    assert type(again) is type(matcher)
    assert again.to_json() == stored


def test_filter_round_trip_and_shorthands() -> None:
    conditions = m.compile_filter({"name": "Joe", "address": {"city": "NYC"},
                                   "age": m.Gt(3)})
    assert conditions["name"] == m.Is("Joe")
    assert conditions["address"] == m.Fields({"city": m.Is("NYC")})
    stored = m.filter_to_json(conditions)
    assert m.filter_from_json(stored) == conditions
    assert m.matches_json(stored, {"name": "Joe", "address": {"city": "NYC"}, "age": 4})
    assert not m.matches_json(stored, {"name": "Joe", "address": {"city": "NYC"}, "age": 3})


@pytest.mark.parametrize("pattern", ["(", "[a-", "a{2,1}", "*"])
def test_like_refuses_invalid_regex(pattern: str) -> None:
    with pytest.raises(ValueError, match="not a valid regular expression"):
        m.Like(pattern)


@pytest.mark.parametrize("pattern", [r"(?P<x>a)", r"(?P<x>a)(?P=x)", r"(?#note)", r"\N{DIGIT ONE}",
                                     r"\u0041", r"(?a)\w", r"(?u)\w"])
def test_like_refuses_python_only_regex(pattern: str) -> None:
    with pytest.raises(ValueError, match="only Python"):
        m.Like(pattern)


def test_matcher_type_checks() -> None:
    with pytest.raises(TypeError):
        m.Gt(True)
    with pytest.raises(TypeError):
        m.Lte(None)
    with pytest.raises(TypeError):
        m.Gte([1])
    with pytest.raises(TypeError):
        m.Startswith(1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        m.Like(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("spec,message", [
    ({"op": "gt", "value": True}, "compares"),
    ({"op": "startswith", "value": 3}, "string"),
    ({"op": "like", "value": "("}, "regular expression"),
    ({"op": "nope"}, "unknown matcher op"),
    ({"value": 1}, "'op'"),
    ("is", "'op'"),
    ({"op": "is"}, "needs 'value'"),
    ({"op": "in"}, "needs 'values'"),
    ({"op": "and"}, "needs 'args'"),
    ({"op": "not"}, "needs 'arg'"),
    ({"op": "fields"}, "needs 'match'"),
    ({"op": "and", "args": [{"op": "bad"}]}, "unknown matcher op"),
])
def test_from_json_validates(spec: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        m.from_json(spec)  # type: ignore[arg-type]


def test_python_semantics_spot_checks() -> None:
    assert m.matches({"n": m.Is(1)}, {"n": 1.0})
    assert not m.matches({"n": m.Is(1)}, {"n": True})
    assert not m.matches({"n": m.Is(True)}, {"n": 1})
    assert not m.matches({"n": m.In(1, 2)}, {"n": True})
    assert not m.matches({"n": m.Contains(1)}, {"n": [True]})
    assert m.matches({"n": m.Contains(1)}, {"n": [2, 1.0]})
    assert not m.matches({"n": m.Gt(0)}, {"n": True})
    assert not m.matches({"n": m.Gt(0)}, {"n": "1"})
    assert m.matches({"s": m.Gt("Z")}, {"s": "a"})  # code point order, not a locale's
    assert m.matches({"s": m.Lt("\uffff")}, {"s": "\U0001F600"}) is False
    assert m.matches({"x": m.Exists(False)}, {})
    assert not m.matches({"x": m.Exists(False)}, {"x": None})
    assert m.matches({"x": m.Is(None)}, {"x": None})
    assert not m.matches({"x": m.Is(None)}, {})
    assert m.matches({"x": ~m.Is(None)}, {})
    assert m.matches({"x": m.Any()}, {})
    assert not m.matches(m.compile_filter({"a": {"b": 1}}), {"a": {"c": 1}})
    assert m.matches(m.compile_filter({"a": {"b": m.Exists(False)}}), {"a": {}})
    assert not m.matches(m.compile_filter({"a": {"b": m.Exists(False)}}), {"a": 1})


# -- message ids -------------------------------------------------------------------------------

_ULID = re.compile(r"^msg_[0-9A-HJKMNP-TV-Z]{26}$")


def test_message_id_format_and_uniqueness() -> None:
    ids = [new_message_id() for _ in range(20000)]
    assert all(_ULID.match(i) for i in ids), ids[:3]
    assert len(set(ids)) == len(ids)
    assert all("." not in i for i in ids)


def test_message_ids_sort_by_time() -> None:
    ids = []
    for _ in range(30):
        ids.append(new_message_id())
        time.sleep(0.002)
    assert ids == sorted(ids)
    # The first ten characters are the millisecond timestamp.
    stamp = int.from_bytes(b"", "big")
    for ch in ids[-1][4:14]:
        stamp = stamp * 32 + "0123456789ABCDEFGHJKMNPQRSTVWXYZ".index(ch)
    assert abs(stamp / 1000 - time.time()) < 60


# -- hooks and the registry --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["person", "clarion.listener.disabled", "a_b.C9", "x"])
def test_hook_names_allowed(name: str) -> None:
    assert Hook(name=name).name == name


@pytest.mark.parametrize("name", ["has space", "a..b", ".a", "a.", "a-b", "é", "a/b", "a:b"])
def test_hook_names_refused(name: str) -> None:
    with pytest.raises(ValueError, match="hook name"):
        Hook(name=name)


class NamelessHook(Hook):
    provides_args = ["x"]


def test_hook_default_name_and_attributes() -> None:
    assert NamelessHook().name == "test_webhooks_units.namelesshook"
    with pytest.raises(TypeError, match="no attribute 'colour'"):
        Hook(name="x", colour="red")
    Hook(name="x", **{"async": True})  # durian's flag is accepted and ignored


def test_registry() -> None:
    registry = HookRegistry()
    person = registry.register(Hook(name="person"))
    assert "person" in registry and len(registry) == 1
    assert registry.get_hook("person") is person
    with pytest.raises(AlreadyRegistered, match="person"):
        registry.register(Hook(name="person"))
    registry.register(NamelessHook)
    assert registry.as_choices() == [("person", "person"),
                                     ("test_webhooks_units.namelesshook",
                                      "test_webhooks_units.namelesshook")]
    registry.unregister(NamelessHook)
    registry.unregister("person")
    assert len(registry) == 0
    with pytest.raises(NotRegistered, match="person"):
        registry.unregister("person")
    with pytest.raises(NotRegistered, match="nope"):
        registry.get_hook("nope")


def test_global_registry_has_the_durian_and_operational_hooks() -> None:
    from webhook_apps.people.hooks import PersonHook

    assert {"person", "myhook", "clarion.listener.disabled",
            "clarion.attempt.exhausted"} <= {h.name for h in hooks}
    with pytest.raises(AlreadyRegistered):
        hooks.register(PersonHook)


def test_listener_builder_refuses_fields_the_hook_does_not_provide() -> None:
    from webhook_apps.people.hooks import MyHook, PersonHook

    with pytest.raises(ValueError, match=r"provides no field 'secret'.*\['address', 'name'\]"):
        PersonHook().listener(url="http://127.0.0.1/x").match(secret="s")
    with pytest.raises(ValueError, match="'owner'"):
        MyHook().listener(url="http://127.0.0.1/x").match(name="Joe", owner=1)
    builder = PersonHook().listener(url="http://127.0.0.1/x").match(name=m.Startswith("J"))
    assert builder.conditions == {"name": m.Startswith("J")}
    # A hook without provides_args filters on anything.
    Hook(name="free").listener(url="http://127.0.0.1/x").match(anything=1)


def test_prepare_payload_keeps_only_provided_fields() -> None:
    from webhook_apps.people.hooks import MyHook

    assert MyHook().prepare_payload(None, name="a", address="b", secret="s") == {
        "name": "a", "address": "b"}
    assert Hook(name="free").prepare_payload(None, secret="s") == {"secret": "s"}
