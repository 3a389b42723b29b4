"""Brokers for hub processes started by the control tests (``broker = "control_brokers:…"``,
with this directory on PYTHONPATH)."""

from __future__ import annotations

from clarion.broker.memory import MemoryBroker
from clarion.errors import BrokerError


class NoControlBroker(MemoryBroker):
    """Everything works except control messages: what a node sees when the broker refuses
    them (Redis away for that one call)."""

    async def publish_control(self, data: bytes, *, to: str | None = None) -> None:
        raise BrokerError("publish_control failed: the control link is down (test broker)")
