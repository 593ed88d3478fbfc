"""One Redis connection pool per process, for heartbeats and live events."""

import time
from functools import cache

import redis
from django.conf import settings

from . import workerstate


@cache
def get() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=2)


def heartbeat_key() -> str:
    return workerstate.heartbeat_key(settings.CELERY_TASK_DEFAULT_QUEUE)


def worker_state() -> tuple[float | None, int]:
    """(seconds since this node's last worker heartbeat or None, tasks waiting in its queue).

    Raises redis.RedisError when Redis does not answer.
    """
    r = get()
    with r.pipeline(transaction=False) as pipe:
        pipe.get(heartbeat_key())
        pipe.llen(settings.CELERY_TASK_DEFAULT_QUEUE)
        beat, queued = pipe.execute()
    return workerstate.heartbeat_age_s(beat, now=time.time()), int(queued)


def worker_stalled(age_s: float | None, queued: int) -> bool:
    """This node's worker is dead or not consuming (see workerstate.worker_stalled)."""
    stall_after = workerstate.stall_after_s(settings.HEARTBEAT_INTERVAL_S)
    return workerstate.worker_stalled(age_s=age_s, queued=queued, stall_after=stall_after)
