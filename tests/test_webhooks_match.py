"""Listener filters evaluated by the databases agree with ``clarion.django.match.matches``.

``store.dispatch`` fans events out with ``clarion_match``: a PL/pgSQL function on PostgreSQL
(migration 0002) and a Python function registered on each SQLite connection. Both must give
exactly the answer of the pure-Python definition, for every matcher, on any JSON: here random
filters and events are written as rows, dispatched, and the Delivery rows compared with Python.
"""

# ruff: noqa: E402  (Django is configured before the imports that need it)
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

import django_env

django_env.configure()

from django.db import connections
from django.utils import timezone
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from clarion.django import match as m
from clarion.django.hooks import new_message_id
from clarion.django.models import Delivery, Event, Listener
from clarion.django.store import open_store
from webhook_support import webhook_databases

__all__ = ["webhook_databases"]

DATABASES = ["default", "sqlite"]
HOOK = "matchtest"


@pytest.fixture
def empty(webhook_databases: None) -> Iterator[None]:
    for db in DATABASES:
        wipe(db)
    yield
    for db in DATABASES:
        wipe(db)
    connections.close_all()


def wipe(db: str) -> None:
    Delivery.objects.using(db).all().delete()
    Event.objects.using(db).all().delete()
    Listener.objects.using(db).all().delete()


def db_matches(db: str, filters: list[dict[str, Any]], events: list[dict[str, Any]]
               ) -> set[tuple[int, int]]:
    """(filter index, event index) pairs the database's dispatch matched."""
    wipe(db)
    listeners = Listener.objects.using(db).bulk_create([
        Listener(hook=HOOK, url=f"http://127.0.0.1/{i}", match=f, secret="whsec_x")
        for i, f in enumerate(filters)
    ])
    rows = Event.objects.using(db).bulk_create([
        Event(msg_id=new_message_id(), hook=HOOK, payload="{}", data=d, created_at=timezone.now())
        for d in events
    ])
    if db == "sqlite":  # bulk_create does not return ids on every version: read them back
        rows = list(Event.objects.using(db).order_by("id"))
        listeners = list(Listener.objects.using(db).order_by("id"))
    lix = {listener.id: i for i, listener in enumerate(listeners)}
    eix = {event.id: i for i, event in enumerate(rows)}
    store = open_store(db)
    assert store.dispatch(10_000) == len(events)
    assert store.dispatch(10_000) == 0
    return {(lix[lid], eix[eid]) for lid, eid in
            Delivery.objects.using(db).values_list("listener_id", "event_id")}


def python_matches(filters: list[dict[str, Any]], events: list[dict[str, Any]]
                   ) -> set[tuple[int, int]]:
    return {(i, j) for i, f in enumerate(filters) for j, d in enumerate(events)
            if m.matches_json(f, d)}


def check(filters: list[dict[str, Any]], events: list[dict[str, Any]]) -> None:
    filters = [json.loads(json.dumps(f)) for f in filters]
    events = [json.loads(json.dumps(e)) for e in events]
    expected = python_matches(filters, events)
    for db in DATABASES:
        got = db_matches(db, filters, events)
        if got != expected:
            lines = [f"{db} disagrees with Python:"]
            for i, j in sorted(got ^ expected):
                lines.append(f"  filter {json.dumps(filters[i])} on {json.dumps(events[j])}: "
                             f"python {(i, j) in expected}, {db} {(i, j) in got}")
            raise AssertionError("\n".join(lines))


# -- random JSON and matchers ------------------------------------------------------------------

FIELDS = ["name", "age", "tags", "addr", "ok"]
TEXT = st.lists(st.sampled_from(["a", "b", "J", "Jo", "e", "é", "Z", "z", "日", "😀", " ", "0",
                                 "%", "_", "\\", "'", "ß", "\uffff"]), max_size=4).map("".join)
NUMBERS = st.one_of(
    st.integers(-3, 3), st.sampled_from([0.5, 1.0, -0.0, 2.5, -1.5, 3.0, 1e20, 10**20,
                                         2**53, 2**53 + 1, float(2**53), 0.1, 0.30000000000000004]),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.sampled_from(FIELDS), inner, max_size=3)),
    max_leaves=6,
)
DATA = st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=4)
PATTERNS = st.sampled_from(["^J", "e$", "o", "^J.*e$", "a.b", "^$", "[ab]+", "J|Z", "^(ab)*$",
                            "é", "^.{2}$", "[0-9]", "日", "^[^a]*$", "b?e", "😀", "^.$",
                            "(?i)j", "a{2}", "^\\\\"])


def leaf() -> st.SearchStrategy[m.Matcher]:
    return st.one_of(
        st.just(m.Any()),
        JSON.map(m.Is),
        TEXT.map(m.Startswith),
        TEXT.map(m.Endswith),
        st.one_of(TEXT, SCALARS, st.lists(SCALARS, max_size=2)).map(m.Contains),
        PATTERNS.map(m.Like),
        st.lists(JSON, max_size=3).map(m.In),
        st.tuples(st.sampled_from([m.Gt, m.Gte, m.Lt, m.Lte]),
                  st.one_of(NUMBERS, TEXT)).map(lambda t: t[0](t[1])),
        st.booleans().map(m.Exists),
    )


MATCHERS = st.recursive(
    leaf(),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda a: m.And(*a)),
        st.lists(inner, max_size=3).map(lambda a: m.Or(*a)),
        inner.map(m.Not),
        st.dictionaries(st.sampled_from(FIELDS), inner, max_size=2).map(m.Fields),
    ),
    max_leaves=5,
)
FILTERS = st.dictionaries(st.sampled_from(FIELDS), MATCHERS, max_size=3).map(m.filter_to_json)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(filters=st.lists(FILTERS, min_size=1, max_size=6),
       events=st.lists(DATA, min_size=1, max_size=6))
@example(filters=[{"ok": {"op": "is", "value": 1}}],
         events=[{"ok": True}, {"ok": 1.0}, {"ok": 1}, {"ok": "1"}, {}])
def test_databases_agree_with_python(empty: None, filters: list[dict[str, Any]],
                                     events: list[dict[str, Any]]) -> None:
    check(filters, events)


# -- chosen edge cases -------------------------------------------------------------------------

EDGE_EVENTS = [
    {}, {"x": None}, {"x": True}, {"x": False}, {"x": 1}, {"x": 1.0}, {"x": 0}, {"x": -0.0},
    {"x": 2.5}, {"x": "1"}, {"x": ""}, {"x": "Joe"}, {"x": "joe"}, {"x": "Jöe"},
    {"x": "Z"}, {"x": "a"}, {"x": "é"}, {"x": "\uffff"}, {"x": "😀"}, {"x": [1, "a", True]},
    {"x": [1.0]}, {"x": [True]}, {"x": []}, {"x": [[1, 2]]}, {"x": {"y": 1}},
    {"x": {"y": None}}, {"x": {}}, {"x": {"y": {"z": "deep"}}}, {"x": 10**20},
    {"x": 2**53 + 1}, {"x": "a_b"}, {"x": "a%b"}, {"x": "J\\"},
]

EDGE_FILTERS: list[m.Matcher] = [
    m.Any(), m.Is(None), m.Is(True), m.Is(False), m.Is(1), m.Is(1.0), m.Is(0), m.Is(""),
    m.Is([1, "a", True]), m.Is([1]), m.Is({"y": 1}), m.Is({}), m.Is([]), m.Is(10**20),
    m.Is(1e20), m.Is(2**53), m.Is(float(2**53)),
    m.Startswith(""), m.Startswith("J"), m.Startswith("Jö"), m.Endswith(""), m.Endswith("e"),
    m.Endswith("😀"), m.Contains("o"), m.Contains(""), m.Contains(1), m.Contains(True),
    m.Contains([1, 2]), m.Contains("_"), m.Contains("%"), m.Contains("\\"),
    m.Like("^J"), m.Like("o"), m.Like("^$"), m.Like("^.$"), m.Like("[a-z]"), m.Like("a.b"),
    m.Like("(?i)^J"), m.Like("\\\\$"),
    m.In(1, "Joe", None), m.In(True), m.In([1, 2]), m.In(), m.In({"y": 1}),
    m.Gt(0), m.Gte(1), m.Lt(1.5), m.Lte(-0.0), m.Gt(10**19), m.Gt("Z"), m.Lt("é"),
    m.Gte(""), m.Gt("\uffff"), m.Lt("😀"),
    m.Exists(), m.Exists(False),
    m.Fields({"y": 1}), m.Fields({"y": m.Exists(False)}), m.Fields({"y": None}), m.Fields({}),
    m.Fields({"y": {"z": m.Endswith("p")}}),
    m.Not(m.Is(None)), m.Not(m.Exists()), m.Not(m.Gt(0)), m.And(), m.Or(),
    m.Startswith("J") & m.Endswith("e"), m.Is(1) | m.Is("Joe"), ~(m.Gt(0) | m.Is(None)),
    m.And(m.Exists(), m.Not(m.Is(None))), m.Or(m.Exists(False), m.Is(None)),
]


def test_edge_cases(empty: None) -> None:
    filters = [{"x": f.to_json()} for f in EDGE_FILTERS] + [{}]
    check(filters, EDGE_EVENTS)


def test_several_fields_all_must_match(empty: None) -> None:
    filters = [m.filter_to_json(m.compile_filter(f)) for f in (
        {"name": "Joe", "age": m.Gte(18)},
        {"name": m.Startswith("J"), "tags": m.Contains("vip")},
        {"address": {"city": m.In("NYC", "LA"), "zip": m.Exists(False)}},
        {"name": m.Like("^J(oe|ane)$") | m.Is("Bob"), "age": ~m.Lt(18)},
    )]
    events = [
        {"name": "Joe", "age": 18}, {"name": "Joe", "age": 17.5}, {"name": "Jane", "age": 30},
        {"name": "Bob", "tags": ["vip"]}, {"name": "Joe", "tags": ["vip", "x"]},
        {"address": {"city": "NYC"}}, {"address": {"city": "LA", "zip": None}},
        {"address": "NYC"}, {"name": "Bob"}, {"name": "Janet", "age": 40},
    ]
    check(filters, events)
    expected = python_matches(filters, events)
    assert (0, 0) in expected and (0, 1) not in expected and (2, 5) in expected
    assert (3, 8) in expected and (3, 9) not in expected


def test_ten_thousand_listeners_one_dispatch(empty: None) -> None:
    """One event is matched against 10,000 listeners of its hook in one dispatch."""
    specs = [
        {"name": m.Is("Joe").to_json()},
        {"name": m.Startswith("J").to_json()},
        {},
        {"name": m.Is("Bob").to_json()},
        {"name": m.Like("^J.e$").to_json(), "address": m.Exists().to_json()},
    ]
    data = {"name": "Joe", "address": "Joe Street"}
    expected = sum(1 for i in range(10_000) if m.matches_json(specs[i % 5], data))
    assert expected == 8000
    for db in DATABASES:
        wipe(db)
        Listener.objects.using(db).bulk_create(
            [Listener(hook=HOOK, url=f"http://127.0.0.1/{i}", match=specs[i % 5],
                      secret="whsec_x") for i in range(10_000)],
            batch_size=2000,
        )
        Listener.objects.using(db).create(hook="otherhook", url="http://127.0.0.1/o",
                                          secret="whsec_x")
        Event.objects.using(db).create(msg_id=new_message_id(), hook=HOOK, payload="{}",
                                       data=data)
        store = open_store(db)
        assert store.dispatch(500) == 1
        assert Delivery.objects.using(db).count() == expected, db
        assert Delivery.objects.using(db).filter(listener__hook="otherhook").count() == 0
        assert Event.objects.using(db).get().dispatched_at is not None
        wipe(db)


def test_inactive_listeners_and_owners(empty: None) -> None:
    """Only active listeners get deliveries; an owned event goes only to its owner's
    listeners; an unowned one to everyone's."""
    from django.contrib.auth.models import User

    for db in DATABASES:
        wipe(db)
        User.objects.using(db).all().delete()
        alice = User.objects.db_manager(db).create_user("alice")
        bob = User.objects.db_manager(db).create_user("bob")
        mk = Listener.objects.using(db).create
        everyone = mk(hook=HOOK, url="http://127.0.0.1/a", secret="whsec_x")
        off = mk(hook=HOOK, url="http://127.0.0.1/b", secret="whsec_x", active=False)
        alices = mk(hook=HOOK, url="http://127.0.0.1/c", secret="whsec_x", owner=alice)
        bobs = mk(hook=HOOK, url="http://127.0.0.1/d", secret="whsec_x", owner=bob)
        for owner in (None, alice):
            Event.objects.using(db).create(msg_id=new_message_id(), hook=HOOK, payload="{}",
                                           data={}, owner=owner)
        open_store(db).dispatch(100)
        got = set(Delivery.objects.using(db).values_list("event__owner_id", "listener_id"))
        assert got == {(None, everyone.id), (None, alices.id), (None, bobs.id),
                       (alice.id, alices.id)}, db
        assert off.id not in {lid for _, lid in got}
        wipe(db)
        User.objects.using(db).all().delete()


def test_large_numbers_compare_as_written(empty: None) -> None:
    """An int and a float compare by their JSON text, as PostgreSQL's numeric does: 1e23 is
    100000000000000000000000, not the binary float's 99999999999999991611392."""
    filters = [{"x": f.to_json()} for f in (
        m.Is(1e23), m.Gt(1e23), m.Lt(1e23), m.Gte(1e23), m.Is(10**23), m.In(1e23), m.Is(1e300),
        m.Contains(1e23), m.Gte(2**53 + 1), m.Lte(0.1), m.Is(2**53), m.Gt(0.30000000000000004),
    )]
    events = [{"x": v} for v in (
        99999999999999991611392, 99999999999999991611393, 10**23, 1e23, 10**300, [10**23],
        float(2**53), 2**53 + 1, 0, 0.1, 1, 0.3, 2**53)]
    check(filters, events)
    assert m.matches_json(filters[0], {"x": 10**23})
    assert not m.matches_json(filters[0], {"x": 99999999999999991611392})


@pytest.mark.parametrize("pattern", [
    "a++", "a*+", "a?+", "a{1,2}+", "(?>a)", r"\bJoe", r"\Bo", "[[:alpha:]]", "[a[:digit:]]",
    "a{,2}", "(?i:a)", "(?m)^a", "(?s)a.b", "(?im)a", "(?a)a", "(?u)a",
])
def test_like_refuses_patterns_postgresql_reads_differently(pattern: str) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # Python's "possible nested set"
        with pytest.raises(ValueError, match="PostgreSQL"):
            m.Like(pattern)


@pytest.mark.parametrize("pattern", [
    "(?i)j", r"\++", "a+?", "[+*]", "a{2,3}", "(?:ab)+", r"\d+\.\d", "^J.*e$", r"\Aa\Z",
    "[:a]", r"\{,", r"\w\W\s\S",
])
def test_like_patterns_both_engines_share_are_allowed_and_agree(empty: None,
                                                                 pattern: str) -> None:
    spec = {"x": m.Like(pattern).to_json()}
    check([spec], [{"x": v} for v in ("Joe", "joe", "J o e", "++", "aa", "a", "aab", "1.5",
                                      "[", ":", "{,", "x_o", "", "a b", "é")])


@pytest.mark.parametrize("pattern", ["(?x) J o e", "(?=J)", "(?<=J)o", "(?<!x)o", r"(a)\1"])
def test_like_refuses_what_needs_backtracking(pattern: str) -> None:
    # Both engines know these, but they cannot be matched in linear time (RE2 refuses them):
    # a tenant's pattern must not hold the worker, and the GIL, for seconds.
    with pytest.raises(ValueError, match="linear time"):
        m.Like(pattern)


def test_like_is_linear_on_a_catastrophic_pattern() -> None:
    # Python's re takes minutes on this; RE2 answers at once.
    assert not m.Like("(a+)+$").check_text("a" * 100_000 + "b")
    assert m.Like("^(a|aa)+$").check_text("a" * 100_000)


@pytest.mark.parametrize("pattern,text", [("a.b", "a\nb"), ("a$", "a\n"), ("^.+$", "a\nb")])
def test_like_newline_semantics(empty: None, pattern: str, text: str) -> None:
    check([{"x": m.Like(pattern).to_json()}], [{"x": text}])


@pytest.mark.parametrize("pattern,text", [(r"\d", "\u0663"), (r"\s", "\x1c")])
def test_like_unicode_classes(empty: None, pattern: str, text: str) -> None:
    check([{"x": m.Like(pattern).to_json()}], [{"x": text}])


def test_a_bad_stored_pattern_does_not_stop_dispatch(empty: None) -> None:
    Listener.objects.create(hook=HOOK, url="http://127.0.0.1/bad", secret="whsec_x",
                            match={"x": {"op": "like", "value": "a++"}})  # bypasses Like()
    good = Listener.objects.create(hook=HOOK, url="http://127.0.0.1/good", secret="whsec_x")
    Event.objects.create(msg_id=new_message_id(), hook=HOOK, payload="{}", data={"x": "a"})
    open_store("default").dispatch(100)
    assert list(Delivery.objects.values_list("listener_id", flat=True)) == [good.id]


def test_nul_in_a_field_on_postgresql(empty: None) -> None:
    from webhook_apps.people.hooks import MyHook

    MyHook().send(name="a\x00b", address="x")
    assert Event.objects.count() == 1
