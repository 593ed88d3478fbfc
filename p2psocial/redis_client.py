"""One Redis connection pool per process, for heartbeats and live events."""

import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import cache

import redis
from django.conf import settings
from redis.exceptions import LockError

from . import workerstate


@cache
def get() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=2)


def heartbeat_key() -> str:
    return workerstate.heartbeat_key(settings.CELERY_TASK_DEFAULT_QUEUE)


@dataclass(frozen=True)
class WorkerState:
    heartbeat_age_s: float | None  # None: no heartbeat in Redis
    queued: int  # tasks waiting in this node's queue
    redis_uptime_s: float

    @property
    def stalled(self) -> bool:
        """This node's worker is dead or not consuming (see workerstate.worker_stalled)."""
        return workerstate.worker_stalled(
            age_s=self.heartbeat_age_s,
            queued=self.queued,
            stall_after=workerstate.stall_after_s(settings.HEARTBEAT_INTERVAL_S),
            redis_uptime_s=self.redis_uptime_s,
        )


def worker_state() -> WorkerState:
    """This node's worker heartbeat and queue, as Redis sees them.

    Raises redis.RedisError when Redis does not answer.
    """
    r = get()
    with r.pipeline(transaction=False) as pipe:
        pipe.get(heartbeat_key())
        pipe.llen(settings.CELERY_TASK_DEFAULT_QUEUE)
        pipe.info("server")
        beat, queued, info = pipe.execute()
    return WorkerState(
        heartbeat_age_s=workerstate.heartbeat_age_s(beat, now=time.time()),
        queued=int(queued),
        redis_uptime_s=float(info.get("uptime_in_seconds", 0)),
    )


@contextmanager
def single_flight(name: str, *, ttl_s: float) -> Iterator[bool]:
    """`with single_flight("report", ttl_s=35) as mine:` True for the one caller (across
    processes) that may go ahead; False while another holds it. The lock expires after
    ttl_s if its holder dies. With Redis unavailable, everyone goes ahead (True)."""
    try:
        lock = get().lock(f"p2p:single-flight:{settings.CELERY_TASK_DEFAULT_QUEUE}:{name}",
                          timeout=ttl_s)  # fmt: skip
        mine = lock.acquire(blocking=False)
    except redis.RedisError:
        yield True
        return
    try:
        yield mine
    finally:
        if mine:
            with suppress(redis.RedisError, LockError):
                lock.release()
