"""Where a node's worker leaves its heartbeat, and when a worker counts as stalled.

No Django imports: settings, /health, the production watchdog (`manage.py check_worker`)
and the devnet supervisor (outside Django) all read the same names and the same rule.
"""

from __future__ import annotations

# A worker whose heartbeat is older than this many heartbeat intervals is not consuming.
STALL_AFTER_INTERVALS = 6


def default_queue(role: str, node_name: str) -> str:
    """The Celery queue of a server unless P2P_CELERY_QUEUE names another."""
    return f"p2p-{role}-{node_name or 'default'}"


def heartbeat_key(queue: str) -> str:
    """The Redis key where the workers of `queue` write the time of their last heartbeat."""
    return f"p2p:heartbeat:{queue}"


def stall_after_s(heartbeat_interval_s: float) -> float:
    return heartbeat_interval_s * STALL_AFTER_INTERVALS


def heartbeat_age_s(value: bytes | str | None, *, now: float) -> float | None:
    """Seconds since the heartbeat stored in Redis, or None when there is none (or garbage)."""
    if value is None:
        return None
    try:
        return max(0.0, now - float(value))
    except ValueError:
        return None


def worker_stalled(
    *, age_s: float | None, queued: int, stall_after: float, redis_uptime_s: float
) -> bool:
    """Tasks wait while no heartbeat came for too long: the worker is dead or not consuming.

    Beat queues a heartbeat task every interval, so a worker that stops consuming always
    has something queued; an old heartbeat over an empty queue points at beat instead. A
    missing heartbeat counts only once Redis has been up for longer than stall_after: a
    restarted Redis has lost it, and the worker needs a moment to reconnect.
    """
    if queued <= 0:
        return False
    if age_s is None:
        return redis_uptime_s > stall_after
    return age_s > stall_after
