"""Tasks that belong to the process as a whole, not to one domain."""

import time

import redis
from celery import shared_task
from django.conf import settings

from . import redis_client

# A task start refreshes the heartbeat at most this often per process.
ACTIVITY_WRITE_INTERVAL_S = 1.0
_last_activity_write = 0.0


@shared_task(name="p2psocial.tasks.heartbeat", acks_late=False)
def heartbeat() -> None:
    """Record that a worker of this node takes tasks; /health and the watchdogs read it.

    Beat queues it every interval for an idle worker; a busy one also refreshes it at every
    task start (record_activity), so threads tied up by slow calls do not look stalled."""
    global _last_activity_write
    redis_client.get().set(
        redis_client.heartbeat_key(),
        f"{time.time():.3f}",
        ex=int(settings.HEARTBEAT_INTERVAL_S * 6),
    )
    _last_activity_write = time.monotonic()


def record_activity() -> None:
    """A task is starting: the worker consumes. Writes the heartbeat, at most once a second."""
    if time.monotonic() - _last_activity_write < ACTIVITY_WRITE_INTERVAL_S:
        return
    try:
        heartbeat()
    except redis.RedisError:
        pass  # the task itself meets Redis's absence and says so


@shared_task(name="p2psocial.tasks.echo", acks_late=False)
def echo(key: str) -> None:
    """Push to a Redis list: the benchmark's empty-task round trip through the broker."""
    redis_client.get().rpush(key, b"1")
