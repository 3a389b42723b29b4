"""Structured logs: one event per line, as text or JSON. Credentials never reach a log."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

_SECRET_PARAMS = re.compile(r"((?:^|[?&])(?:token|session|ticket|api_key)=)[^&\s]*", re.I)


def redact_url(url: str) -> str:
    """``/connection/sse?channel=a&token=eyJ…`` → ``/connection/sse?channel=a&token=[redacted]``"""
    return _SECRET_PARAMS.sub(r"\1[redacted]", url)


class Logger:
    def __init__(self, name: str = "clarion", fmt: str = "text", level: str = "info") -> None:
        self._logger = logging.getLogger(name)
        self._fmt = fmt
        self._logger.setLevel(level.upper())
        if not self._logger.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(message)s"))
            self._logger.addHandler(handler)
            self._logger.propagate = False

    def _emit(self, level: int, event: str, fields: dict[str, Any], exc: bool = False,
              exc_info: BaseException | None = None) -> None:
        if not self._logger.isEnabledFor(level):
            return
        for key in ("url", "path"):
            if isinstance(fields.get(key), str):
                fields[key] = redact_url(fields[key])
        if self._fmt == "json":
            record = {"ts": round(time.time(), 3), "level": logging.getLevelName(level).lower(),
                      "event": event, **fields}
            line = json.dumps(record, default=str)
        else:
            extra = " ".join(f"{k}={v}" for k, v in fields.items())
            line = f"{logging.getLevelName(level).lower():7} {event}" + (f" {extra}" if extra
                                                                          else "")
        self._logger.log(level, line, exc_info=exc_info or exc)

    def debug(self, event: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit(logging.ERROR, event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        self._emit(logging.ERROR, event, fields, exc=True)

    def failure(self, event: str, exc: BaseException, **fields: Any) -> None:
        """An error with the traceback of ``exc`` (raised elsewhere: a task's, a thread's)."""
        if self._logger.isEnabledFor(logging.ERROR):
            fields["error"] = repr(exc)
            self._emit(logging.ERROR, event, fields, exc_info=exc)
