"""The hub: one asyncio process serving client transports, the server API and metrics."""

from clarion.hub.app import Hub
from clarion.hub.config import Config, NamespaceOptions, load_config

__all__ = ["Config", "Hub", "NamespaceOptions", "load_config"]
