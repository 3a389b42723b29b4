from django.apps import AppConfig


class BenchConfig(AppConfig):
    name = "clarion_bench"
    label = "clarion_bench"

    def ready(self) -> None:
        from clarion_bench import hooks  # noqa: F401  (registers BenchHook)
