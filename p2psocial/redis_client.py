"""One Redis connection pool per process, for heartbeats and live events."""

from functools import cache

import redis
from django.conf import settings


@cache
def get() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=2)


def heartbeat_key() -> str:
    return f"p2p:heartbeat:{settings.CELERY_TASK_DEFAULT_QUEUE}"
