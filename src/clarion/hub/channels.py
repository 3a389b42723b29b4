"""Channel names, namespaces and who may do what in a channel (Centrifugo's rules)."""

from __future__ import annotations

import re

from clarion.errors import ReplyError
from clarion.hub.config import ChannelOptions, Config
from clarion.protocol import codes

MAX_CHANNEL_LENGTH = 255
NAMESPACE_BOUNDARY = ":"
USER_BOUNDARY = "#"
USER_SEPARATOR = ","


class ChannelRules:
    def __init__(self, config: Config) -> None:
        self._top = config
        self._namespaces = config.namespaces
        self._regexes = {
            name: re.compile(ns.channel_regex)
            for name, ns in config.namespaces.items() if ns.channel_regex
        }

    def lenient_options(self, channel: str) -> ChannelOptions:
        """For GRIP channels, whose names follow no namespace scheme: a known namespace's
        options, else the top-level ones. A name that is no channel at all still fails."""
        try:
            return self.options(channel)
        except ReplyError as exc:
            if exc.code == 102:
                return self._top
            raise

    def options(self, channel: str) -> ChannelOptions:
        """The options that apply to ``channel``; 102 unknown channel if it has none."""
        if not channel or len(channel) > MAX_CHANNEL_LENGTH or not channel.isprintable():
            raise codes.bad_request()
        namespace, sep, rest = channel.partition(NAMESPACE_BOUNDARY)
        if not sep:
            return self._top
        options = self._namespaces.get(namespace)
        if options is None:
            raise codes.unknown_channel()
        regex = self._regexes.get(namespace)
        if regex is not None and not regex.fullmatch(rest):
            raise codes.unknown_channel()
        return options

    @staticmethod
    def limited_users(channel: str) -> frozenset[str] | None:
        """The users a ``…#u1,u2`` channel is limited to, None for an ordinary channel."""
        _, sep, users = channel.rpartition(USER_BOUNDARY)
        if not sep:
            return None
        return frozenset(u for u in users.split(USER_SEPARATOR) if u)

    def check_subscribe(self, channel: str, user: str, has_token: bool) -> ChannelOptions:
        """Whether a client may subscribe without a subscription token (or with one)."""
        options = self.options(channel)
        if has_token:
            return options
        users = self.limited_users(channel)
        if users is not None and options.allow_user_limited_channels:
            if user and user in users:
                return options
            raise codes.permission_denied()
        if options.allow_subscribe_for_client and (user or options.allow_subscribe_for_anonymous):
            return options
        raise codes.permission_denied()

    @staticmethod
    def check_action(options: ChannelOptions, action: str, user: str, subscribed: bool) -> None:
        """publish / history / presence by a client: allowed by the ``allow_<action>_…`` flags."""
        for_subscriber = getattr(options, f"allow_{action}_for_subscriber")
        for_client = getattr(options, f"allow_{action}_for_client")
        for_anonymous = getattr(options, f"allow_{action}_for_anonymous")
        if not user and not for_anonymous:
            raise codes.permission_denied()
        if for_client or (for_subscriber and subscribed):
            return
        raise codes.permission_denied()


def ensure_feature(enabled: bool) -> None:
    if not enabled:
        raise ReplyError(108, "not available")
