"""Per-node Redis locks with a heartbeat: one worker at a time drains a node's outbox or
pulls its files, and a killed worker's lock expires within its TTL."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

import redis
from django.conf import settings

from p2psocial import redis_client

logger = logging.getLogger(__name__)


def delivery_lock_ttl_s() -> float:
    """A node's delivery lock lives this long unless its holder extends it; a heartbeat
    thread does, every third of it, for as long as the holder drains the node (however
    slow the exchange). So a worker killed mid-delivery stalls that queue this long."""
    return settings.DELIVERY_LOCK_TTL_S


class HeldLock:
    """A node's delivery lock while this worker holds it: a heartbeat thread extends it to
    a full TTL every third of the TTL, also while an exchange waits on the peer, until
    release(). held turns False if the lock was lost (it expired, e.g. while this process
    was frozen, and maybe another worker has it now)."""

    def __init__(self, node: str, lock: Any, ttl_s: float) -> None:
        self.node = node
        self._lock = lock
        self._lost = threading.Event()
        self._released = threading.Event()
        self._heartbeat = threading.Thread(
            target=self._keep, args=(ttl_s / 3,), name=f"delivery-lock {node}", daemon=True
        )
        self._heartbeat.start()

    @property
    def held(self) -> bool:
        return not self._lost.is_set()

    def _keep(self, every_s: float) -> None:
        while not self._released.wait(every_s):
            try:
                self._lock.reacquire()
            except redis.exceptions.LockNotOwnedError:
                self._lost.set()
                logger.warning("delivery lock lost", extra={"node": self.node})
                return
            except redis.RedisError as exc:
                # Redis is away: nobody can take the lock meanwhile; try again next beat.
                logger.warning(
                    "delivery lock not extended", extra={"node": self.node, "error": str(exc)}
                )

    def release(self) -> None:
        self._released.set()
        self._heartbeat.join()
        if self.held:
            with contextlib.suppress(redis.RedisError):
                self._lock.release()


def lock_name(node: str, purpose: str = "deliver") -> str:
    return f"p2p:messaging:{purpose}-lock:{settings.CELERY_TASK_DEFAULT_QUEUE}:{node}"


def lock_expires_in_s(node: str, purpose: str = "deliver") -> float | None:
    """How long node's delivery lock lasts unless its holder extends it (None: unknown)."""
    try:
        remaining_ms = redis_client.get().pttl(lock_name(node, purpose))
    except redis.RedisError:
        return None
    return remaining_ms / 1000 if remaining_ms >= 0 else None


@contextlib.contextmanager
def node_lock(node: str, purpose: str = "deliver") -> Iterator[HeldLock | bool | None]:
    """A Redis lock so that one worker at a time works on a node's queue (purpose:
    deliver, the outbox; pull, the files to fetch from it).

    Yields the held lock, None when Redis is unavailable (delivery is idempotent, so going
    on without it only risks duplicate work), or False when another worker holds it.
    """
    name = lock_name(node, purpose)
    ttl_s = delivery_lock_ttl_s()
    try:
        # Not thread-local: the heartbeat thread extends the lock this thread took.
        lock = redis_client.get().lock(name, timeout=ttl_s, thread_local=False)
        acquired = lock.acquire(blocking=False)
    except redis.RedisError as exc:
        logger.warning("delivery lock unavailable", extra={"node": node, "error": str(exc)})
        yield None
        return
    if not acquired:
        yield False
        return
    held = HeldLock(node, lock, ttl_s)
    try:
        yield held
    finally:
        held.release()
