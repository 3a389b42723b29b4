"""Settings for the Channels peer.  BENCH_CHANNEL_LAYER=memory|redis picks the layer."""

import os

SECRET_KEY = "bench-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["channels"]
DATABASES: dict = {}
USE_TZ = True
ROOT_URLCONF = "channels_app.urls"
ASGI_APPLICATION = "channels_app.asgi.application"
LOGGING_CONFIG = None

_layer = os.environ.get("BENCH_CHANNEL_LAYER", "memory")
if _layer == "redis":
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # own db and prefix so the benchmark never touches anything else in Redis
                "hosts": [
                    {
                        "address": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15"),
                        # redis-py's default pool (100) overflows on a burst of connects
                        "max_connections": 5000,
                    }
                ],
                "prefix": "clarionbench",
                # default capacity (100 per channel) would silently drop under fan-out load
                "capacity": 100_000,
                "expiry": 600,
            },
        }
    }
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels.layers.InMemoryChannelLayer",
            "CONFIG": {"capacity": 100_000, "expiry": 600},
        }
    }
