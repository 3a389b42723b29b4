"""Pushpin's routes-file syntax.

One route per line: ``<condition>[,opt...] <target>[,opt...] [<target>...]``; ``#`` starts a
comment. The condition is ``*`` (any host) or an exact host name. A request goes to the most
specific route: an exact host before ``*``, then the longest ``path_beg``, then file order.
Targets are tried in order when one cannot be reached.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from clarion.errors import GripError

# Pushpin options we accept and ignore: they tune features this proxy does differently or
# not at all (JSONP, SockJS, auto-CORS, per-route logging). Using one logs a warning.
IGNORED_CONDITION_OPTS = frozenset({"debug", "aco", "log_level", "jsonp_callback_param",
                                    "jsonp_body_param", "jsonp_default_callback", "session",
                                    "orig_headers", "sockjs", "sockjs_as_path", "header"})
IGNORED_TARGET_OPTS = frozenset({"one_event", "trust_connect_host", "client_cert",
                                 "client_key"})


@dataclass(slots=True)
class Target:
    host: str
    port: int
    ssl: bool = False
    insecure: bool = False
    untrusted: bool = False
    over_http: bool = False
    host_header: str | None = None
    subscribe: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(slots=True)
class Route:
    line: int
    domain: str  # "*" or a host name, lower case
    targets: list[Target]
    id: str | None = None
    proto: str | None = None  # "http" | "ws"
    ssl: bool | None = None
    path_beg: str = ""
    prefix: str = ""
    sig_iss: str | None = None
    sig_key: str | None = None
    as_host: str | None = None
    path_rem: int = 0
    replace_beg: str | None = None
    no_grip: bool = False

    def rewrite_path(self, path: str) -> str:
        if self.replace_beg is not None and self.path_beg and path.startswith(self.path_beg):
            path = self.replace_beg + path[len(self.path_beg):]
        elif self.path_rem:
            path = path[self.path_rem:]
        return path if path.startswith("/") else "/" + path


@dataclass(slots=True)
class RouteTable:
    routes: list[Route]
    warnings: list[str] = field(default_factory=list)

    def match(self, host: str, path: str, websocket: bool, tls: bool = False) -> Route | None:
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        name = name.lower()
        best: Route | None = None
        best_key: tuple[int, int] | None = None
        for route in self.routes:
            if route.domain != "*" and route.domain != name:
                continue
            if route.proto is not None and route.proto != ("ws" if websocket else "http"):
                continue
            if route.ssl is not None and route.ssl != tls:
                continue
            if route.path_beg and not path.startswith(route.path_beg):
                continue
            key = (route.domain != "*", len(route.path_beg))
            if best_key is None or key > best_key:
                best, best_key = route, key
        return best


def _bool(value: str | None, where: str) -> bool:
    if value is None or value in ("yes", "true", "1"):
        return True
    if value in ("no", "false", "0"):
        return False
    raise GripError(f"{where}: expected yes or no, got {value!r}")


def _split_opts(token: str) -> tuple[str, list[tuple[str, str | None]]]:
    head, *rest = token.split(",")
    opts: list[tuple[str, str | None]] = []
    for part in rest:
        name, eq, value = part.partition("=")
        opts.append((name.strip(), value if eq else None))
    return head, opts


def _target(token: str, where: str, warnings: list[str]) -> Target:
    spec, opts = _split_opts(token)
    if spec == "test" or spec.startswith(("zhttp/", "zhttpreq/")):
        raise GripError(f"{where}: target {spec!r} is a Pushpin-internal handler, not supported"
                        " (give host:port)")
    if spec.startswith("["):
        host, _, port_s = spec[1:].partition("]:")
    else:
        host, _, port_s = spec.rpartition(":")
    if not host or not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise GripError(f"{where}: target must be host:port, got {spec!r}")
    target = Target(host, int(port_s))
    for name, value in opts:
        if name == "ssl":
            target.ssl = _bool(value, f"{where} ssl")
        elif name == "insecure":
            target.insecure = _bool(value, f"{where} insecure")
        elif name == "untrusted":
            target.untrusted = _bool(value, f"{where} untrusted")
        elif name == "over_http":
            target.over_http = _bool(value, f"{where} over_http")
        elif name == "host":
            target.host_header = value
        elif name == "sub":
            if not value:
                raise GripError(f"{where}: sub= needs a channel name")
            target.subscribe.append(value)
        elif name in IGNORED_TARGET_OPTS:
            warnings.append(f"{where}: target option {name!r} is ignored")
        else:
            raise GripError(f"{where}: unknown target option {name!r}")
    return target


def parse_routes(text: str, source: str = "routes") -> RouteTable:
    routes: list[Route] = []
    warnings: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source}:{number}"
        tokens = line.split()
        if len(tokens) < 2:
            raise GripError(f"{where}: a route needs a condition and at least one target: "
                            f"{raw.strip()!r}")
        domain, opts = _split_opts(tokens[0])
        if not domain:
            raise GripError(f"{where}: empty condition")
        route = Route(number, domain.lower(), [_target(t, where, warnings) for t in tokens[1:]])
        for name, value in opts:
            if name == "proto":
                if value not in ("http", "ws"):
                    raise GripError(f"{where}: proto must be http or ws, got {value!r}")
                route.proto = value
            elif name == "ssl":
                route.ssl = _bool(value, f"{where} ssl")
            elif name in ("id", "prefix", "sig_iss", "sig_key", "as_host", "replace_beg",
                          "path_beg"):
                if value is None:
                    raise GripError(f"{where}: option {name} needs a value ({name}=...)")
                setattr(route, name, value)
            elif name == "path_rem":
                if value is None or not value.isdigit():
                    raise GripError(f"{where}: path_rem needs a number")
                route.path_rem = int(value)
            elif name == "no_grip":
                route.no_grip = _bool(value, f"{where} no_grip")
            elif name in IGNORED_CONDITION_OPTS or name.startswith("jsonp_"):
                warnings.append(f"{where}: option {name!r} is ignored")
            else:
                raise GripError(f"{where}: unknown option {name!r}")
        if route.replace_beg is not None and not route.path_beg:
            raise GripError(f"{where}: replace_beg needs path_beg")
        routes.append(route)
    return RouteTable(routes, warnings)
