"""Incoming signed requests: one decorator for every server-to-server endpoint.

It enforces the body limit, parses and verifies the node signature (timestamp window
and signature via peers.protocol) before any write, refuses a reused nonce, and maps
every ProtocolError to a JSON 4xx with a stable code. The nonce is recorded in the same
transaction as the view's writes, so a request is either wholly applied or not at all.
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from functools import wraps
from typing import Any

from django.conf import settings
from django.db import DatabaseError, OperationalError, connection, transaction
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from . import protocol
from .models import SeenNonce

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KnownNode:
    """What a resolver returns for a node allowed to call: its name, key and model row."""

    name: str
    verify_key: bytes
    obj: Any


NodeResolver = Callable[[str], KnownNode]
SignedView = Callable[[HttpRequest, KnownNode], dict[str, Any] | tuple[dict[str, Any], int]]


def error_response(error: protocol.ProtocolError) -> JsonResponse:
    return with_retry_after(JsonResponse({"error": error.as_dict()}, status=error.status))


def with_retry_after(response: JsonResponse) -> JsonResponse:
    """A 503 (WriterBusy) tells the caller when to send the same request again."""
    if response.status_code == 503 and "Retry-After" not in response:
        response["Retry-After"] = str(writer_retry_after_s())
    return response


def refuse_oversized_body(length: int) -> None:
    """413 when a body of this many bytes (declared or read so far) is over the limit."""
    limit = settings.PEER_MAX_BODY_BYTES
    if length > limit:
        raise protocol.ProtocolError("body_too_large", f"body exceeds {limit} bytes", 413)


def declared_length(value: str | None) -> int:
    """The Content-Length header as a number (0 when absent); 400 when it is not one."""
    try:
        return int(value or 0)
    except ValueError:
        raise protocol.ProtocolError("bad_request", "invalid Content-Length") from None


def read_body(request: HttpRequest) -> bytes:
    """The exact request bytes, refused with 413 when over the limit."""
    refuse_oversized_body(declared_length(request.META.get("CONTENT_LENGTH")))
    body = request.read(settings.PEER_MAX_BODY_BYTES + 1)
    refuse_oversized_body(len(body))
    return body


_last_prune = 0.0


def prune_seen_nonces() -> int:
    """Forget nonces older than twice the timestamp window: their requests are stale anyway."""
    cutoff = timezone.now() - timedelta(seconds=2 * settings.REQUEST_MAX_SKEW_S)
    deleted, _ = SeenNonce.objects.filter(created_at__lt=cutoff).delete()
    return deleted


def _prune_now_and_then() -> None:
    # Both roles prune from the request path (the login server runs no beat); at most
    # once per NONCE_PRUNE_INTERVAL_S per process.
    global _last_prune
    now = time.monotonic()
    if now - _last_prune >= settings.NONCE_PRUNE_INTERVAL_S:
        _last_prune = now
        prune_seen_nonces()


def verify_signed(
    *, method: str, path: str, authorization: str | None, body: bytes, resolve: NodeResolver
) -> tuple[KnownNode, protocol.RequestAuth]:
    """Check the Authorization header, the node and its signature; reads only, no writes.

    Runs before the write transaction, so a forged or stale request never takes the
    database's write lock. path is the path with its query, exactly as sent.
    """
    auth = protocol.parse_auth_header(authorization)
    node = resolve(auth.node)
    protocol.verify_request(
        node.verify_key,
        auth,
        method=method,
        path=path,
        body=body,
        max_skew_s=settings.REQUEST_MAX_SKEW_S,
    )
    return node, auth


_CLAIM_NONCE_SQL = (
    "INSERT INTO peers_seennonce (node, nonce, timestamp, created_at) "
    "VALUES (%s, %s, %s, %s) ON CONFLICT (node, nonce) DO NOTHING"
)


def record_nonce(auth: protocol.RequestAuth) -> None:
    """Claim the request's nonce in the caller's transaction; a second claim is a replay.

    One INSERT that skips a conflict (no savepoint, no exception round trip): the unique
    (node, nonce) constraint decides, and a rowcount of 0 means the nonce was seen.
    """
    _prune_now_and_then()
    with connection.cursor() as cursor:
        cursor.execute(
            _CLAIM_NONCE_SQL,
            [
                auth.node,
                auth.nonce,
                auth.timestamp,
                connection.ops.adapt_datetimefield_value(timezone.now()),
            ],
        )
        claimed = cursor.rowcount
    if claimed != 1:
        raise protocol.ProtocolError("replayed_nonce", "this nonce was already used", 401)


# SQLite has one writer, and a writer that finds it taken sleeps in SQLite's busy handler
# (1, 2, 5, 10 ... 100 ms steps) although a signed request's transaction takes well under
# a millisecond. Signed requests therefore queue for it first: threads of this process on
# a lock, then processes (several web processes on one database) on an flock of a file
# beside the database. Signed requests, sending, read marking and the worker's delivery
# writes queue here; other writers (the admin, sessions, presence and directory tasks,
# management commands) take SQLite's lock without queueing. The wait is bounded by
# WRITER_LOCK_WAIT_S, the queue and SQLite's lock together: a writer that holds either
# longer (a stuck process, a long foreign transaction, a tight loop of foreign writes)
# makes queued writes answer WriterBusy (503 with Retry-After) instead of piling up behind
# it, or failing with "database is locked" after SQLite's own busy timeout.
_sqlite_writer = threading.Lock()
_writer_lock_files: dict[str, int] = {}
# How long a waiter sleeps between flock attempts: short first (a transaction is well
# under a millisecond), then every 10 ms. A free lock is taken without any sleep.
_FLOCK_POLL_S = (0.0005, 0.001, 0.002, 0.005, 0.01)
# SQLite's answers to a write that cannot start or finish: another connection holds the
# write lock (SQLITE_BUSY), or the file system is full (SQLITE_FULL).
_SQLITE_BUSY = "database is locked"
_SQLITE_FULL = "database or disk is full"
_SQLITE_IOERR = "disk I/O error"
_FULL_BELOW_BYTES = 1024 * 1024  # less free space than this is a full disk to SQLite
_POSTGRES_DISK_FULL = "53100"  # SQLSTATE disk_full


class WriterBusy(protocol.ProtocolError):
    """The database's writer lock stayed taken for WRITER_LOCK_WAIT_S: nothing was written,
    and the same request can be sent again shortly (503, Retry-After: retry_after_s)."""

    code = "writer_busy"

    def __init__(self) -> None:
        super().__init__(self.code, "the server is busy writing; try again shortly", 503)
        self.retry_after_s = writer_retry_after_s()


class StorageFull(protocol.ProtocolError):
    """The database's disk is full: the write was rolled back whole, nothing was stored,
    and the same request succeeds once an operator frees space (507)."""

    code = "storage_full"

    def __init__(self) -> None:
        super().__init__(self.code, "the server's storage is full; nothing was stored", 507)


def writer_retry_after_s() -> int:
    """The Retry-After (whole seconds) of a WriterBusy answer: about one bounded wait."""
    return max(1, math.ceil(settings.WRITER_LOCK_WAIT_S))


def storage_refusal(error: DatabaseError) -> WriterBusy | StorageFull | None:
    """The refusal that a database error means for the caller: WriterBusy when another
    writer kept the database locked, StorageFull when its disk is full; None for any other
    error. Either refusal comes from a transaction that wrote nothing."""
    text = str(error)
    if isinstance(error, OperationalError) and _SQLITE_BUSY in text:
        logger.warning("writer lock busy", extra={"holder": "a writer outside the queue"})
        return WriterBusy()
    full = _SQLITE_FULL in text or getattr(error.__cause__, "sqlstate", None) == _POSTGRES_DISK_FULL
    # Opening the database fails "disk I/O error" when SQLite cannot make its WAL index
    # (the -shm file) on a full disk: that is a full disk too, any other I/O error is not.
    if full or (_SQLITE_IOERR in text and _database_disk_is_full()):
        logger.error("storage full: the database's disk has no space left", extra={"error": text})
        return StorageFull()
    return None


def _database_disk_is_full() -> bool:
    if connection.vendor != "sqlite" or connection.is_in_memory_db():
        return False
    try:
        stats = os.statvfs(os.path.dirname(os.fspath(connection.settings_dict["NAME"])))
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < _FULL_BELOW_BYTES


@contextmanager
def storage_errors_refused() -> Iterator[None]:
    """Raise a busy or full database as WriterBusy or StorageFull (see storage_refusal)."""
    try:
        yield
    except DatabaseError as error:
        refusal = storage_refusal(error)
        if refusal is None:
            raise
        raise refusal from None


def _writer_lock_path() -> str | None:
    """The writer lock file beside the database (None for an in-memory database)."""
    if connection.is_in_memory_db():
        return None
    return f"{connection.settings_dict['NAME']}.writer-lock"


def _writer_lock_file() -> int | None:
    """This process's descriptor of the database's writer lock file (None in memory)."""
    path = _writer_lock_path()
    if path is None:
        return None
    # Per process id: a forked child must open its own descriptor, since an flock held
    # through an inherited one would be shared with the parent, not exclusive.
    key = f"{os.getpid()}:{path}"
    fd = _writer_lock_files.get(key)
    if fd is None:
        fd = _writer_lock_files[key] = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    return fd


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _flock_before(fd: int, deadline: float) -> bool:
    """Take the exclusive flock on fd, polling until deadline (time.monotonic()); False
    when it is still taken then. (A blocking flock cannot be given a timeout.)"""
    pauses = itertools.chain(_FLOCK_POLL_S, itertools.repeat(_FLOCK_POLL_S[-1]))
    while not _try_flock(fd):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(next(pauses), remaining))
    return True


def _busy(started: float) -> WriterBusy:
    logger.warning("writer lock busy", extra={"waited_s": round(time.monotonic() - started, 3)})
    return WriterBusy()


@contextmanager
def _queued_for_sqlite() -> Iterator[float | None]:
    """Hold this process's and the database's writer lock; yields when the wait began
    (time.monotonic()), or None when both were free at once."""
    # The clock is read only when a lock is taken: the free path costs two try-locks.
    started = None
    if not _sqlite_writer.acquire(blocking=False):
        started = time.monotonic()
        if not _sqlite_writer.acquire(timeout=settings.WRITER_LOCK_WAIT_S):
            raise _busy(started)
    try:
        fd = _writer_lock_file()
        if fd is None:
            yield started
            return
        if not _try_flock(fd):
            started = time.monotonic() if started is None else started
            if not _flock_before(fd, started + settings.WRITER_LOCK_WAIT_S):
                raise _busy(started)
        try:
            yield started
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        _sqlite_writer.release()


def _set_busy_timeout_ms(raw: Any, value: int) -> int:
    """Set SQLite's busy timeout of a connection (ms); returns the one it had."""
    (before,) = raw.execute("PRAGMA busy_timeout").fetchone()
    raw.execute(f"PRAGMA busy_timeout = {int(value)}")
    return before


@contextmanager
def _begun(started: float | None) -> Iterator[None]:
    """An atomic block whose BEGIN (IMMEDIATE) waits for SQLite's lock only what is left
    of WRITER_LOCK_WAIT_S since started (all of it when None); WriterBusy after that.

    Writers outside the queue (the admin, sessions, presence tasks, management commands)
    take SQLite's lock directly: with the connection's 20 s busy timeout the queue's head
    would wait for them holding the queue, then fail with "database is locked". The
    connection's own timeout is back before the block runs, for its other writes.
    """
    budget_s = settings.WRITER_LOCK_WAIT_S
    if started is not None:  # the clock is read only when the queue was waited for
        budget_s -= time.monotonic() - started
    connection.ensure_connection()
    raw = connection.connection
    configured_ms = _set_busy_timeout_ms(raw, max(1, int(budget_s * 1000)))
    stack = ExitStack()
    try:
        stack.enter_context(transaction.atomic())
    except OperationalError as error:
        if _SQLITE_BUSY not in str(error):
            raise
        raise _busy(time.monotonic() - budget_s if started is None else started) from None
    finally:
        raw.execute(f"PRAGMA busy_timeout = {int(configured_ms)}")
    with stack:
        yield


@contextmanager
def write_transaction() -> Iterator[None]:
    """One atomic write transaction, queued first (threads and processes) on SQLite.

    Raises WriterBusy when the database stayed locked for WRITER_LOCK_WAIT_S, StorageFull
    when its disk is full; either way nothing of the block was written.
    """
    if connection.vendor != "sqlite" or connection.in_atomic_block:
        with storage_errors_refused(), transaction.atomic():
            yield
        return
    with storage_errors_refused(), _queued_for_sqlite() as started, _begun(started):
        yield


def signed_path(request: HttpRequest) -> str:
    """The path and query exactly as the client sent them (still percent-encoded), which
    is what its signature covers; Django's get_full_path() decodes and encodes again, so a
    path with escapes in it would not verify. For routes with a variable segment."""
    scope = getattr(request, "scope", None)
    raw = scope.get("raw_path") if scope else None
    if not raw:
        return request.get_full_path()
    query = scope.get("query_string") or b""
    return raw.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")


def verify_signed_get(
    request: HttpRequest, *, resolve: NodeResolver
) -> tuple[KnownNode | None, JsonResponse | None]:
    """A GET signed by a node resolve() accepts, its nonce claimed: (the node, None), or
    (None, the JSON refusal to answer). For peer routes that answer a stream or bytes,
    which signed_endpoint (JSON answers) does not fit."""
    if request.method != "GET":
        return None, error_response(protocol.ProtocolError("method_not_allowed", "use GET", 405))
    path = signed_path(request)
    try:
        with storage_errors_refused():
            node, auth = verify_signed(
                method="GET",
                path=path,
                authorization=request.headers.get("Authorization"),
                body=read_body(request),
                resolve=resolve,
            )
            with write_transaction():
                record_nonce(auth)
    except protocol.ProtocolError as error:
        log_refusal(error, path=path, remote=request.META.get("REMOTE_ADDR"))
        return None, error_response(error)
    return node, None


def log_refusal(error: protocol.ProtocolError, *, path: str, remote: str | None) -> None:
    logger.warning(
        "signed request refused",
        extra={"code": error.code, "path": path, "remote": remote},
    )


def run_signed(
    *,
    method: str,
    path: str,
    authorization: str | None,
    body: bytes,
    remote: str | None,
    resolve: NodeResolver,
    view: Callable[[KnownNode], dict[str, Any] | tuple[dict[str, Any], int]],
) -> tuple[dict[str, Any], int]:
    """Verify a signed request, then claim its nonce and run view(node) in one write
    transaction. Returns (payload, status); a refusal is the error payload and its 4xx."""
    try:
        with storage_errors_refused():
            node, auth = verify_signed(
                method=method, path=path, authorization=authorization, body=body, resolve=resolve
            )
            with write_transaction():
                record_nonce(auth)
                result = view(node)
    except protocol.ProtocolError as error:
        log_refusal(error, path=path, remote=remote)
        return {"error": error.as_dict()}, error.status
    return result if isinstance(result, tuple) else (result, 200)


def signed_endpoint(resolve: NodeResolver, *, methods: tuple[str, ...] = ("POST",)):
    """Decorate a view `(request, node) -> dict | (dict, status)` as a signed JSON endpoint."""

    def decorate(view: SignedView):
        @csrf_exempt
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
            if request.method not in methods:
                error = protocol.ProtocolError(
                    "method_not_allowed", f"use {' or '.join(methods)}", 405
                )
                return error_response(error)
            remote = request.META.get("REMOTE_ADDR")
            try:
                body = read_body(request)
            except protocol.ProtocolError as error:
                log_refusal(error, path=request.path, remote=remote)
                return error_response(error)
            request.signed_body = body
            payload, status = run_signed(
                method=request.method,
                path=request.get_full_path(),
                authorization=request.headers.get("Authorization"),
                body=body,
                remote=remote,
                resolve=resolve,
                view=lambda node: view(request, node, *args, **kwargs),
            )
            return with_retry_after(
                JsonResponse(payload, status=status, json_dumps_params={"ensure_ascii": False})
            )

        return wrapper

    return decorate
