"""Prometheus metrics. The hot path bumps plain integers; a collector reads them on scrape."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from clarion.hub.app import Hub

# Every transport's session name, so each shows in the gauge (as 0) before its first client:
# Clarion's own, the SDKs' bidirectional emulation, Centrifugo's unidirectional endpoints.
TRANSPORTS = ("websocket", "sse", "stream", "poll", "http_stream", "bidi_sse",
              "uni_websocket", "uni_sse", "uni_http_stream")

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class HubMetrics:
    def __init__(self) -> None:
        self.deliveries = 0
        self.publications = 0
        self.messages_in = 0
        self.tickets_issued = 0
        self.tickets_consumed = 0
        self.connections_total: Counter[str] = Counter()
        self.disconnects: Counter[int] = Counter()
        self.api_calls: Counter[str] = Counter()
        self.recoveries: Counter[bool] = Counter()
        self.grip_requests = 0
        self.grip_errors = 0
        self.grip_published = 0
        self.grip_websockets = 0
        self.grip_holds: Counter[str] = Counter()
        # Parts that raised and were contained (a task, a handler, a housekeeping round, the
        # embedded webhook worker): each is logged with its traceback and counted here.
        self.failures: Counter[str] = Counter()
        # Production limits (clarion.hub.limits): "header_timeout", "body_timeout",
        # "address_limit"; and keep-alive connections closed for idling.
        self.refusals: Counter[str] = Counter()
        self.http_idle_closed = 0
        # Node-to-node control messages (clarion.hub.control), by kind; failures by why:
        # "send" (the broker refused it), "malformed", "version" (another release's format).
        self.control_sent: Counter[str] = Counter()
        self.control_received: Counter[str] = Counter()
        self.control_failed: Counter[str] = Counter()
        # Bidirectional emulation (clarion.hub.emulation): commands posted to /emulation, by
        # where they went: "local" (the session is on this node), "forwarded" (to the node
        # holding it), "gone" (no such session any more), "refused" (malformed, too big).
        self.emulation_commands: Counter[str] = Counter()
        # Proxies to the app's backend, by (proxy, outcome): proxy is connect, refresh,
        # subscribe, publish, sub_refresh or rpc; outcome is "ok", "error" (the backend's own
        # error or disconnect answer), "unavailable" (down, timed out, answered garbage).
        self.proxy_requests: Counter[tuple[str, str]] = Counter()
        self.registry = CollectorRegistry(auto_describe=True)
        self.latency = Histogram(
            "clarion_publish_to_deliver_seconds",
            "Time from a publication entering the broker to its fan-out being written to "
            "every local subscriber's socket.",
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self._pending_latency: list[float] = []

    def delivered(self, count: int, published_at: float) -> None:
        self.deliveries += count
        self.publications += 1
        if published_at:
            self._pending_latency.append(published_at)

    def observe_flush(self) -> None:
        """Called after a flush of all queued writes: those publications have gone out."""
        pending = self._pending_latency
        if pending:
            self._pending_latency = []
            now = time.time()
            for t in pending:
                self.latency.observe(max(0.0, now - t))

    def attach(self, hub: Hub) -> None:
        self.registry.register(_HubCollector(hub))

    def include(self, registry: CollectorRegistry, prefix: str) -> None:
        """Also expose ``registry``'s metrics whose names start with ``prefix`` (the embedded
        webhook worker's), without importing what made them."""
        self.registry.register(_Included(registry, prefix))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _HubCollector(Collector):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        hub = self.hub
        m = hub.metrics
        by_transport = Counter(s.transport for s in hub.fanout.sessions.values())
        g = GaugeMetricFamily("clarion_connections", "Open client connections.",
                              labels=["transport"])
        for transport in TRANSPORTS:
            g.add_metric([transport], by_transport.get(transport, 0))
        yield g
        yield GaugeMetricFamily("clarion_subscriptions", "Channel subscriptions on this node.",
                                value=sum(len(s) for s in hub.fanout.channels.values()))
        yield GaugeMetricFamily("clarion_channels", "Channels with subscribers on this node.",
                                value=len(hub.fanout.channels))
        c = CounterMetricFamily("clarion_connections_accepted", "Connections accepted.",
                                labels=["transport"])
        for transport, n in m.connections_total.items():
            c.add_metric([transport], n)
        yield c
        yield CounterMetricFamily("clarion_messages_sent", "Publications delivered to "
                                  "subscribers (one per subscriber).", value=m.deliveries)
        yield CounterMetricFamily("clarion_publications", "Publications fanned out.",
                                  value=m.publications)
        yield CounterMetricFamily("clarion_messages_received", "Frames received from clients.",
                                  value=m.messages_in)
        d = CounterMetricFamily("clarion_disconnects", "Connections closed by the hub, by code.",
                                labels=["code"])
        for code, n in m.disconnects.items():
            d.add_metric([str(code)], n)
        yield d
        a = CounterMetricFamily("clarion_api_calls", "Server API calls.", labels=["method"])
        for method, n in m.api_calls.items():
            a.add_metric([method], n)
        yield a
        r = CounterMetricFamily("clarion_recoveries", "Subscriptions that asked to recover.",
                                labels=["recovered"])
        for ok, n in m.recoveries.items():
            r.add_metric([str(ok).lower()], n)
        yield r
        yield CounterMetricFamily("clarion_tickets_issued", "One-time tickets issued.",
                                  value=m.tickets_issued)
        yield CounterMetricFamily("clarion_tickets_consumed", "One-time tickets used.",
                                  value=m.tickets_consumed)
        yield CounterMetricFamily(
            "clarion_stream_catch_ups", "Catch-ups from history after a hole in a channel's "
            "stream or a restored broker link (also /health's streams.catch_ups).",
            value=hub.fanout.catch_ups)
        yield CounterMetricFamily(
            "clarion_stream_positions_lost", "Subscribers told their stream position is gone "
            "(insufficient state; also /health's streams.positions_lost).",
            value=hub.fanout.positions_lost)
        cs = CounterMetricFamily("clarion_control_messages_sent", "Control messages this node "
                                 "sent to other nodes, by kind.", labels=["kind"])
        for kind, n in m.control_sent.items():
            cs.add_metric([kind], n)
        yield cs
        cr = CounterMetricFamily("clarion_control_messages_received", "Control messages from "
                                 "other nodes, by kind.", labels=["kind"])
        for kind, n in m.control_received.items():
            cr.add_metric([kind], n)
        yield cr
        cf = CounterMetricFamily("clarion_control_messages_failed", "Control messages not "
                                 "sent (send) or dropped on arrival (malformed, version).",
                                 labels=["why"])
        for why, n in m.control_failed.items():
            cf.add_metric([why], n)
        yield cf
        em = CounterMetricFamily("clarion_emulation_commands", "Commands posted to "
                                 "/emulation, by where they went (local, forwarded, gone, "
                                 "refused).", labels=["outcome"])
        for outcome, n in m.emulation_commands.items():
            em.add_metric([outcome], n)
        yield em
        px = CounterMetricFamily("clarion_proxy_requests", "Requests to the app's backend "
                                 "proxies, by proxy and outcome (ok, error, unavailable).",
                                 labels=["proxy", "outcome"])
        for (proxy, outcome), n in m.proxy_requests.items():
            px.add_metric([proxy, outcome], n)
        yield px
        yield GaugeMetricFamily("clarion_nodes", "Hub nodes sharing the broker that this node "
                                "knows to be alive, itself included.",
                                value=hub.control.node_count)
        f = CounterMetricFamily("clarion_failures", "Failures contained to one part (logged "
                                "with a traceback; the part went on or restarted), by part.",
                                labels=["part"])
        for part, n in m.failures.items():
            f.add_metric([part], n)
        yield f
        rf = CounterMetricFamily("clarion_http_refused", "HTTP connections and requests "
                                 "refused by a production limit, by reason (header_timeout, "
                                 "body_timeout, address_limit).", labels=["reason"])
        for reason, n in m.refusals.items():
            rf.add_metric([reason], n)
        yield rf
        yield CounterMetricFamily("clarion_http_idle_closed", "Keep-alive connections closed "
                                  "after http_keepalive_timeout without a request.",
                                  value=m.http_idle_closed)
        yield GaugeMetricFamily("clarion_http_connections", "Open HTTP connections on this "
                                "node's listeners (taken over ones included).",
                                value=len(hub.http_connections))
        grip = hub.grip
        if grip is None:
            return
        yield CounterMetricFamily("clarion_grip_requests", "Client requests through the GRIP "
                                  "proxy.", value=m.grip_requests)
        yield CounterMetricFamily("clarion_grip_errors", "Bad instructions from origins and "
                                  "bad publish requests.", value=m.grip_errors)
        yield CounterMetricFamily("clarion_grip_items_published", "Items published through "
                                  "the GRIP publish API.", value=m.grip_published)
        h = CounterMetricFamily("clarion_grip_holds", "Holds started, by mode.",
                                labels=["mode"])
        for mode, n in m.grip_holds.items():
            h.add_metric([mode], n)
        yield h
        yield CounterMetricFamily("clarion_grip_websockets", "WebSocket-over-HTTP connections "
                                  "opened.", value=m.grip_websockets)
        yield GaugeMetricFamily("clarion_grip_held", "Connections held by the GRIP proxy now.",
                                value=grip.connection_count)


class _Included(Collector):
    def __init__(self, registry: CollectorRegistry, prefix: str) -> None:
        self.registry = registry
        self.prefix = prefix

    def collect(self) -> Iterator[Metric]:
        for metric in self.registry.collect():
            if metric.name.startswith(self.prefix):
                yield metric


def merge_expositions(parts: Sequence[tuple[str | None, bytes]]) -> bytes:
    """One Prometheus text exposition from several processes' own, each sample labelled
    ``worker="<label>"`` (or left as it is when the label is None: the supervisor's).

    Samples stay exactly as each process rendered them, so a sum over ``worker`` is the
    server's total. The format wants every family's samples together under one HELP/TYPE, so
    they are regrouped by family in the order families first appear. Text is merged rather than
    parsed and rendered again: the parser renames counters and drops ``_created`` pairings, and
    a scrape must not cost more than the processes' own rendering."""
    headers: dict[str, dict[str, str]] = {}  # family -> {"HELP": line, "TYPE": line}
    samples: dict[str, list[str]] = {}
    for label, text in parts:
        family: str | None = None
        for line in text.decode("utf-8", "replace").splitlines():
            if line.startswith(("# HELP ", "# TYPE ")):
                fields = line.split(" ", 3)
                if len(fields) < 3:
                    continue
                family = fields[2]
                samples.setdefault(family, [])
                # One HELP and one TYPE per family: the first process's.
                headers.setdefault(family, {}).setdefault(fields[1], line)
                continue
            if not line or line.startswith("#"):
                continue
            if family is None:
                family = _sample_name(line)
                headers.setdefault(family, {})
                samples.setdefault(family, [])
            samples[family].append(line if label is None else _labelled(line, label))
    out: list[str] = []
    for family, head in headers.items():
        out.extend(head[kind] for kind in ("HELP", "TYPE") if kind in head)
        out.extend(samples[family])
    return ("\n".join(out) + "\n").encode() if out else b""


def _sample_name(line: str) -> str:
    end = len(line)
    for mark in ("{", " "):
        at = line.find(mark)
        if at != -1:
            end = min(end, at)
    return line[:end]


def _labelled(line: str, label: str) -> str:
    # A metric name is [a-zA-Z_:][a-zA-Z0-9_:]*, so the first "{" or space ends it; label
    # values (which may hold either) all come after it.
    name = _sample_name(line)
    rest = line[len(name):]
    value = label.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    if rest.startswith("{}"):
        return f'{name}{{worker="{value}"}}{rest[2:]}'
    if rest.startswith("{"):
        return f'{name}{{worker="{value}",{rest[1:]}'
    return f'{name}{{worker="{value}"}}{rest}'
