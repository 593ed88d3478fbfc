"""GET /events/: one person's live events as server-sent events (see p2psocial/events.py).

The stream opens with `event: ready` (or `event: reset` when the page must reload: events
after its cursor are gone), then relays each event as `id: <cursor>`, `event: <kind>`,
`data: <JSON>`, with a `: keepalive` comment when nothing came for EVENT_HEARTBEAT_S. It
ends after at most EVENT_STREAM_MAX_S, or at once when Redis fails; the browser reconnects
by itself, sending the last id as Last-Event-ID, and the session is checked again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator

import redis
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.http import require_GET

from . import events

logger = logging.getLogger(__name__)

# How long the browser waits before reconnecting: after a stream ends normally, and after
# Redis failed (longer, so that every open tab does not retry each second).
RECONNECT_MS = 1000
UNAVAILABLE_RECONNECT_MS = 5000


@require_GET
async def stream(request: HttpRequest) -> HttpResponse:
    """The person's own events and the node-wide ones, from `Last-Event-ID` or `?cursor=`."""
    user = await request.auser()
    # Checked here too, not only by accounts.middleware: a stream must never open for a
    # password-only session, whatever the middleware order becomes.
    if not (user.is_authenticated and user.is_verified()):
        return JsonResponse(
            {"error": {"code": "login_required", "message": "Log in to continue."}}, status=401
        )
    cursor = request.headers.get("Last-Event-ID") or request.GET.get("cursor") or None
    response = StreamingHttpResponse(relay(user.pk, cursor), content_type="text/event-stream")
    response["Cache-Control"] = "no-store"
    response["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    return response


def frame(cursor: events.Cursor, kind: str, data: dict) -> str:
    """One server-sent event. The JSON is one line: json.dumps escapes every newline."""
    body = json.dumps(data, separators=(",", ":"))
    return f"id: {cursor}\nevent: {kind}\ndata: {body}\n\n"


async def relay(user_id: int, cursor: str | None) -> AsyncIterator[str]:
    """The stream's body for one person, until its lifetime ends or the client leaves
    (Django then cancels it; the Redis connection is closed either way)."""
    loop = asyncio.get_running_loop()
    # Streams opened together (after a restart) do not all reconnect at the same moment.
    deadline = loop.time() + settings.EVENT_STREAM_MAX_S * random.uniform(0.9, 1.0)
    client = events.connect()
    try:
        try:
            position, reset = await events.resume(client, user_id=user_id, cursor=cursor)
        except redis.RedisError as exc:
            logger.warning("event stream unavailable", extra={"error": type(exc).__name__})
            yield f"retry: {UNAVAILABLE_RECONNECT_MS}\n: unavailable\n\n"
            return
        yield f"retry: {RECONNECT_MS}\n" + frame(position, "reset" if reset else "ready", {})
        while (remaining := deadline - loop.time()) > 0:
            block_s = min(settings.EVENT_HEARTBEAT_S, remaining)
            try:
                batch, position = await events.read(
                    client, user_id=user_id, cursor=position, block_s=block_s
                )
            except redis.RedisError as exc:
                logger.warning("event stream cut", extra={"error": type(exc).__name__})
                yield f"retry: {UNAVAILABLE_RECONNECT_MS}\n: unavailable\n\n"
                return
            if batch:
                yield "".join(frame(e.cursor, e.kind, e.data) for e in batch)
            else:
                yield ": keepalive\n\n"
    finally:
        await client.aclose()
