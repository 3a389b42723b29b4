"""System checks of the realtime settings (``manage.py check``; ids clarion.E1xx/W1xx), so a
typo fails at start rather than at the first publication."""

from __future__ import annotations

from typing import Any

from django.core import checks

from clarion.django.conf import realtime_problems

__all__ = ["check_realtime"]

# HS256 keys shorter than the hash's output (32 bytes) weaken the signature (RFC 7518 3.2).
MIN_SECRET_BYTES = 32


def check_realtime(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    conf, problems = realtime_problems()
    found: list[Any] = [checks.Error(message, id=check_id) for check_id, message in problems]
    if conf is None:
        return found
    if conf.HUB.CONFIG is not None:
        from clarion.django.realtime._direct import hub_config
        from clarion.errors import ConfigError

        try:
            hub_config(conf.HUB.CONFIG)
        except ConfigError as exc:
            found.append(checks.Error(f"CLARION['HUB']['CONFIG']: {exc}", id="clarion.E105"))
    elif conf.direct:
        found.append(checks.Warning(
            "CLARION['BROKER'] is set but CLARION['HUB']['CONFIG'] is not: publications go "
            "into Redis with the hub's default channel options (no history, no namespaces), "
            "which differ from what the hub does if its configuration file sets any",
            hint="Set CLARION['HUB']['CONFIG'] to the file the hub runs with "
                 "(clarion serve --config FILE).",
            id="clarion.W101"))
    secret = conf.HUB.TOKEN_HMAC_SECRET
    if secret is not None and len(secret.encode()) < MIN_SECRET_BYTES:
        found.append(checks.Warning(
            f"CLARION['HUB']['TOKEN_HMAC_SECRET'] is {len(secret.encode())} bytes; HS256 "
            f"needs at least {MIN_SECRET_BYTES} to be as strong as its hash",
            hint="Use a random secret of 32 bytes or more, e.g. "
                 "python -c 'import secrets; print(secrets.token_urlsafe(32))', on both sides.",
            id="clarion.W102"))
    return found
