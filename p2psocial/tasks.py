"""Tasks that belong to the process as a whole, not to one domain."""

import time

from celery import shared_task
from django.conf import settings

from . import redis_client


@shared_task(name="p2psocial.tasks.heartbeat", acks_late=False)
def heartbeat() -> None:
    """Record that a worker of this node is alive; /health reads it."""
    redis_client.get().set(
        redis_client.heartbeat_key(),
        f"{time.time():.3f}",
        ex=int(settings.HEARTBEAT_INTERVAL_S * 6),
    )


@shared_task(name="p2psocial.tasks.echo", acks_late=False)
def echo(key: str) -> None:
    """Push to a Redis list: the benchmark's empty-task round trip through the broker."""
    redis_client.get().rpush(key, b"1")
