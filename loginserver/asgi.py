"""The node API's own door: report and directory served beside Django's request handler.

Office nodes call these two endpoints every few seconds. Each request carries its own
authentication (an ed25519 signature over the exact request, a timestamp window and a
one-time nonce), checked by loginserver.api exactly as on Django's path, so the browser
middleware (sessions, CSRF, second factor, messages, axes) has nothing to do for them;
yet Django's ASGI handler cost about 1 ms of CPU per request (a new thread per request,
several thread hand-offs through the middleware chain) plus a new database connection.
Here the request is read on the event loop and answered by one long-lived thread that
keeps its database connection open. Anything else (another path or method, a query
string, a Host outside ALLOWED_HOSTS) goes to Django unchanged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache, partial
from typing import Any

from django.conf import settings
from django.db import connection
from django.http.request import split_domain_port, validate_host

from p2psocial.logging import request_id_var
from p2psocial.middleware import request_id_from
from peers import protocol
from peers.auth import declared_length, log_refusal, refuse_oversized_body

from . import api

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Route = Callable[[dict[str, str], bytes, str | None], api.Answer]

REPORT_PATH = "/api/v1/report"
DIRECTORY_PATH = "/api/v1/directory"


def _report(headers: dict[str, str], body: bytes, remote: str | None) -> api.Answer:
    return api.answer_report(
        path=REPORT_PATH, authorization=headers.get("authorization"), body=body, remote=remote
    )


def _directory(headers: dict[str, str], body: bytes, remote: str | None) -> api.Answer:
    return api.answer_directory(
        path=DIRECTORY_PATH,
        authorization=headers.get("authorization"),
        if_none_match=headers.get("if-none-match"),
        body=body,
        remote=remote,
    )


ROUTES: dict[tuple[str, str], Route] = {
    ("POST", REPORT_PATH): _report,
    ("GET", DIRECTORY_PATH): _directory,
}


@lru_cache(maxsize=64)
def _host_allowed(host: str, allowed: tuple[str, ...], debug: bool) -> bool:
    # As HttpRequest.get_host(): a Host Django would refuse is left to Django to refuse.
    if debug and not allowed:
        allowed = (".localhost", "127.0.0.1", "[::1]")
    domain, _port = split_domain_port(host)
    return bool(domain) and validate_host(domain, allowed)


def _security_headers() -> list[tuple[bytes, bytes]]:
    """The headers Django's middleware puts on every API answer."""
    headers = {
        "Content-Security-Policy": settings.CSP_POLICY,
        "X-Frame-Options": settings.X_FRAME_OPTIONS,
        "Referrer-Policy": settings.SECURE_REFERRER_POLICY,
        "Cross-Origin-Opener-Policy": settings.SECURE_CROSS_ORIGIN_OPENER_POLICY,
    }
    if settings.SECURE_CONTENT_TYPE_NOSNIFF:
        headers["X-Content-Type-Options"] = "nosniff"
    return [(k.lower().encode(), v.encode("latin-1")) for k, v in headers.items() if v]


def _keep_connection_usable() -> None:
    """This thread's connection lives as long as the process (Django's per-request cleanup
    does not run here); after a database error it is checked and replaced if broken."""
    if connection.connection is not None and connection.errors_occurred:
        if connection.is_usable():
            connection.errors_occurred = False
        else:
            connection.close()


def _serve(
    route: Route, headers: dict[str, str], body: bytes, remote: str | None, request_id: str
) -> api.Answer:
    """Runs in the API thread."""
    token = request_id_var.set(request_id)
    try:
        _keep_connection_usable()
        return route(headers, body, remote)
    except Exception:
        # The one place a failure of this door becomes a 500 (Django's handler does the
        # same for its views); the transaction was rolled back by atomic().
        logger.exception("node api request failed", extra={"remote": remote})
        return api.Answer.json(
            {"error": {"code": "server_error", "message": "internal server error"}}, 500
        )
    finally:
        request_id_var.reset(token)


class NodeApi:
    """ASGI app: the node API's report and directory here, every other request to Django."""

    def __init__(self, django_app: Callable[[Scope, Receive, Send], Awaitable[None]]):
        self.django_app = django_app
        # One thread: SQLite takes one writer at a time, and the thread keeps one connection.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="node-api")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = None
        if scope["type"] == "http" and not scope.get("query_string"):
            route = ROUTES.get((scope["method"], scope["path"]))
        headers = _headers(scope) if route is not None else {}
        if route is None or not _host_allowed(
            headers.get("host", ""), tuple(settings.ALLOWED_HOSTS), settings.DEBUG
        ):
            await self.django_app(scope, receive, send)
            return
        client = scope.get("client")
        remote = client[0] if client else None
        request_id = request_id_from(headers.get("x-request-id", ""))
        try:
            body = await _read_body(receive, headers.get("content-length"))
        except protocol.ProtocolError as error:
            log_refusal(error, path=scope["path"], remote=remote)
            answer = api.Answer.json({"error": error.as_dict()}, error.status)
        else:
            if body is None:  # the client went away
                return
            answer = await asyncio.get_running_loop().run_in_executor(
                self.executor, partial(_serve, route, headers, body, remote, request_id)
            )
        await _send(send, answer, request_id)


def _headers(scope: Scope) -> dict[str, str]:
    """Lower-case names; a repeated header is joined with commas, as Django does."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    return headers


async def _read_body(receive: Receive, content_length: str | None) -> bytes | None:
    """The exact body, refused with 413 as soon as it is over the limit; None on disconnect."""
    refuse_oversized_body(declared_length(content_length))
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        refuse_oversized_body(size)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send(send: Send, answer: api.Answer, request_id: str) -> None:
    headers = [(k.lower().encode(), v.encode("latin-1")) for k, v in answer.headers.items()]
    headers += _security_headers()
    headers += [
        (b"content-length", str(len(answer.body)).encode()),
        (b"x-request-id", request_id.encode()),
    ]
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body})
