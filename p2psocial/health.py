"""GET /health: the figures monitoring needs, as JSON; 200 when healthy, 503 otherwise."""

import hmac
import logging

import redis
from django.conf import settings
from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET

from . import redis_client, workerstate

logger = logging.getLogger(__name__)


def collect() -> dict:
    """Every health figure for this role; also shown on the admin's health page."""
    checks: dict = {"role": settings.ROLE, "node": settings.NODE_NAME or None}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except DatabaseError as exc:  # reported, not raised: this endpoint must answer
        logger.warning("health: database unavailable", extra={"error": type(exc).__name__})
        checks["database"] = f"error: {type(exc).__name__}"
    if not settings.IS_LOGIN_SERVER:
        checks["worker_heartbeat_age_s"] = None
        checks["worker_queued"] = None
        checks["worker_stalled"] = None
    try:
        r = redis_client.get()
        r.ping()
        checks["redis"] = "ok"
        if not settings.IS_LOGIN_SERVER:
            worker = redis_client.worker_state()
            age = worker.heartbeat_age_s
            checks["worker_heartbeat_age_s"] = round(age, 1) if age is not None else None
            checks["worker_queued"] = worker.queued
            checks["worker_stalled"] = worker.stalled
    except redis.RedisError as exc:
        logger.warning("health: redis unavailable", extra={"error": type(exc).__name__})
        checks["redis"] = f"error: {type(exc).__name__}"
    if not settings.IS_LOGIN_SERVER:
        from messaging.queries import delivery_health
        from peers.queries import login_server_health

        checks.update(login_server_health())
        checks.update(delivery_health())
    healthy = checks["database"] == "ok" and checks["redis"] == "ok"
    if not settings.IS_LOGIN_SERVER:
        age = checks.get("worker_heartbeat_age_s")
        stall_after = workerstate.stall_after_s(settings.HEARTBEAT_INTERVAL_S)
        healthy = healthy and age is not None and age < stall_after
    checks["status"] = "ok" if healthy else "degraded"
    return checks


def _may_see_figures(request: HttpRequest) -> bool:
    """Queue depths and message ages tell outsiders when the office is busy: only a
    caller with the configured monitoring token sees them."""
    token = settings.HEALTH_TOKEN
    offered = request.headers.get("Authorization", "")
    return bool(token) and hmac.compare_digest(offered.encode(), f"Bearer {token}".encode())


# Monitoring never posts: other methods get 405, not the CSRF page (no cookie, no form).
@csrf_exempt
@require_GET
def health(request: HttpRequest) -> JsonResponse:
    checks = collect()
    status = 200 if checks["status"] == "ok" else 503
    if not _may_see_figures(request):
        checks = {"status": checks["status"], "role": checks["role"]}
    return JsonResponse(checks, status=status)


@csrf_exempt
@require_GET
def live(request: HttpRequest) -> HttpResponse:
    """Liveness: the web process answers. No database or Redis work (the benchmark's floor)."""
    return HttpResponse("ok", content_type="text/plain")
