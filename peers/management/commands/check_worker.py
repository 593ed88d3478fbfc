"""manage.py check_worker: exit 1 when this node's worker is dead or stuck (for a watchdog).

A worker is stuck when tasks wait in its queue and its heartbeat is older than
6 x P2P_HEARTBEAT_INTERVAL_S. The systemd units in docs/deploy/ run this every minute and
restart the worker when it exits 1; it exits 2 when Redis itself does not answer.
"""

from __future__ import annotations

import redis
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from p2psocial import redis_client, workerstate


class Command(BaseCommand):
    help = "Exit 1 when tasks wait and the worker heartbeat is stale (a watchdog restarts it)."

    def handle(self, *args, **options) -> None:
        if settings.IS_LOGIN_SERVER:
            raise CommandError("the login server runs no worker")
        try:
            worker = redis_client.worker_state()
        except redis.RedisError as exc:
            # Not the worker's fault: restarting it would not help, Redis needs attention.
            # Exit 2, which the watchdog unit does not count as a failure.
            raise CommandError(
                f"Redis does not answer ({type(exc).__name__})", returncode=2
            ) from exc
        stall_after = workerstate.stall_after_s(settings.HEARTBEAT_INTERVAL_S)
        age = worker.heartbeat_age_s
        heartbeat = "none" if age is None else f"{age:.0f} s ago"
        summary = (
            f"heartbeat {heartbeat}, {worker.queued} task(s) queued "
            f"(stalled after {stall_after:.0f} s)"
        )
        if worker.stalled:
            self.stderr.write(f"worker stalled: {summary}")
            raise SystemExit(1)
        self.stdout.write(f"worker ok: {summary}")
