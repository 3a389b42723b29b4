"""The benchmark's one hook: ``bench.event`` carrying ``n`` and ``sent_at``."""

from clarion.django.hooks import Hook, hooks


class BenchHook(Hook):
    name = "bench.event"
    provides_args = ["n", "sent_at"]


if "bench.event" not in hooks:
    hooks.register(BenchHook)
