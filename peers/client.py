"""Outgoing HTTP to the login server and to peers: one requests.Session per host, signed."""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
from django.conf import settings
from django.db.models.signals import post_delete, post_save
from nacl.signing import SigningKey
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from p2psocial.logging import request_id_var

from . import protocol
from .identity import local_node, node_signing_key
from .models import NodeIdentity

logger = logging.getLogger(__name__)

_sessions: dict[str, requests.Session] = {}
_lock = threading.Lock()


# Other processes (manage.py rotate_node_key) may replace the key: a running web or
# worker process re-reads it after this long, so a rotation needs no restart.
IDENTITY_CACHE_S = 5.0


@dataclass(frozen=True)
class LocalIdentity:
    name: str
    signing_key: SigningKey
    loaded_at: float


_identity: LocalIdentity | None = None


def local_identity() -> LocalIdentity:
    """This node's name and key, re-read at most every IDENTITY_CACHE_S: every message and
    every signed request needs them. Raises NotJoined before joining (nothing is cached)."""
    global _identity
    identity = _identity
    now = time.monotonic()
    if identity is None or now - identity.loaded_at > IDENTITY_CACHE_S:
        # The decrypted node key stays in this process's memory only, as node_signing_key
        # already keeps it (keyed by the encrypted blob, so a new key is decrypted once).
        identity = LocalIdentity(local_node().name, node_signing_key(), now)
        _identity = identity
    return identity


def _forget_identity(**kwargs: object) -> None:
    global _identity
    _identity = None


post_save.connect(_forget_identity, sender=NodeIdentity, dispatch_uid="peers.client.identity")
post_delete.connect(_forget_identity, sender=NodeIdentity, dispatch_uid="peers.client.identity")


# --- a deadline for a whole exchange ------------------------------------------------------
# requests' timeout bounds each socket operation, not the exchange: a peer that sends one
# byte a second keeps a request open forever. For a request with a deadline, a watchdog
# thread shuts the connection's socket down when the time is up, which ends whatever the
# request is blocked on (connect, TLS, sending, the status line, headers or the body).
ANSWER_CHUNK_BYTES = 64 * 1024
RECHECK_S = 0.05  # how soon an overdue exchange without a socket yet is looked at again


class DeadlineExceeded(requests.Timeout):
    """The exchange was not over by its deadline; its connection was cut."""


class AnswerTooLarge(requests.RequestException):
    """The answer is longer than the caller accepts; the rest was not read."""


class _Exchange:
    """One request with a deadline and the pooled connection it runs on."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.expired = False
        self._connection = None
        self.finished = False
        self._lock = threading.Lock()

    def attach(self, connection) -> None:
        with self._lock:
            self._connection = connection
            missed = self.expired and not _cut(connection)
        if missed:
            _watchdog.recheck(self)

    def detach(self, connection) -> bool:
        """The connection goes back to its pool; True if it was cut and must be closed."""
        with self._lock:
            if self._connection is connection:
                self._connection = None
            return self.expired

    def expire(self) -> None:
        with self._lock:
            if self.finished:
                return
            self.expired = True
            missed = self._connection is None or not _cut(self._connection)
        if missed:
            # No socket to shut yet (still connecting, or not attached): look again soon,
            # so an exchange whose connect outlasted its deadline is still cut.
            _watchdog.recheck(self)

    def finish(self) -> bool:
        """Stop watching; True if the deadline came first."""
        with self._lock:
            self.finished = True
            self._connection = None
            return self.expired


def _cut(connection) -> bool:
    """Shut the connection's socket down; False when it has none yet (connecting)."""
    sock = connection.sock
    if sock is None:
        return False
    # socket.socket's own shutdown, also for a TLS socket: it wakes a thread blocked on
    # the socket at once, without touching the TLS state that thread is using.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    return True


class _Watchdog:
    """One daemon thread per process that expires exchanges at their deadline: watching
    costs a heap push, not a thread or a timer per request."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._wake = threading.Condition()
        self._queue: list[tuple[float, int, _Exchange]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        self._sleeping_until = float("inf")  # the watchdog's next wake-up

    def recheck(self, exchange: _Exchange) -> None:
        """Expire exchange again shortly (its connection had no socket to shut yet)."""
        exchange.deadline = time.monotonic() + RECHECK_S
        self.watch(exchange)

    def watch(self, exchange: _Exchange) -> None:
        with self._wake:
            while self._queue and self._queue[0][2].finished:  # the oldest, mostly done
                heapq.heappop(self._queue)
            heapq.heappush(self._queue, (exchange.deadline, next(self._order), exchange))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="peer-request-deadlines", daemon=True
                )
                self._thread.start()
            elif exchange.deadline < self._sleeping_until:  # rare: deadlines mostly grow
                self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._queue or self._queue[0][0] > time.monotonic():
                    if self._queue:
                        self._sleeping_until = self._queue[0][0]
                        self._wake.wait(self._sleeping_until - time.monotonic())
                    else:
                        self._sleeping_until = float("inf")
                        self._wake.wait()
                self._sleeping_until = float("-inf")  # awake: nobody needs to notify
                exchange = heapq.heappop(self._queue)[2]
            exchange.expire()


_watchdog = _Watchdog()
os.register_at_fork(after_in_child=_watchdog.reset)  # a child has the queue, not the thread
_current = threading.local()  # the exchange this thread is running, if it has a deadline


class _WatchedPoolMixin:
    """Tells the current exchange which connection it runs on, and closes a connection
    cut by the watchdog instead of pooling it."""

    def _get_conn(self, timeout=None):
        connection = super()._get_conn(timeout)
        if connection.sock is not None:  # reused: opened for another request, maybe unchecked
            try:
                _refuse_unless_public(connection.sock)
            except _AddressRefused:
                connection.close()
                raise
        exchange = getattr(_current, "exchange", None)
        if exchange is not None:
            exchange.attach(connection)
        return connection

    def _put_conn(self, connection) -> None:
        exchange = getattr(_current, "exchange", None)
        if exchange is not None and connection is not None and exchange.detach(connection):
            connection.close()
        super()._put_conn(connection)


# --- peers at public addresses only (production) -----------------------------------------
# A peer's URL comes from the directory, that is from what its node reported: in production
# it must not make this node post to its own loopback or internal network. The address is
# checked once connected, before anything is sent (TLS included), so a name that resolves
# differently on the second lookup (DNS rebinding) is caught too.
class PeerAddressRefused(requests.ConnectionError):
    """The peer's URL leads to an address that is not public; nothing was sent to it."""


class _AddressRefused(Exception):
    """Raised inside urllib3; not an OSError, so urllib3 neither wraps nor retries it."""


def _refuse_unless_public(sock: socket.socket) -> None:
    """When this thread's request must reach a public address only, check the socket's."""
    if getattr(_current, "public_only", False):
        address = str(sock.getpeername()[0])
        if not protocol.is_public_address(address):
            raise _AddressRefused(address)


class _PublicOnlyConnectionMixin:
    def _new_conn(self):
        sock = super()._new_conn()
        try:
            _refuse_unless_public(sock)
        except _AddressRefused:
            sock.close()
            raise
        return sock


class _CheckedHTTPConnection(_PublicOnlyConnectionMixin, HTTPConnection):
    pass


class _CheckedHTTPSConnection(_PublicOnlyConnectionMixin, HTTPSConnection):
    pass


@contextlib.contextmanager
def _public_addresses_only(base_url: str, *, to_login_server: bool) -> Iterator[None]:
    """Refuse, in production, a connection to a peer at an address that is not public
    (P2P_ALLOW_PRIVATE_NODE_URLS lifts it). The login server's URL is the operator's own
    configuration and is not checked."""
    _current.public_only = (
        not to_login_server and settings.PRODUCTION and not settings.ALLOW_PRIVATE_NODE_URLS
    )
    try:
        yield
    except _AddressRefused as refused:
        logger.warning(
            "peer address refused",
            extra={"code": "private_peer_address", "url": base_url, "address": str(refused)},
        )
        raise PeerAddressRefused(f"{base_url} leads to {refused}, not a public address") from None
    finally:
        _current.public_only = False


class _WatchedHTTPPool(_WatchedPoolMixin, HTTPConnectionPool):
    ConnectionCls = _CheckedHTTPConnection


class _WatchedHTTPSPool(_WatchedPoolMixin, HTTPSConnectionPool):
    ConnectionCls = _CheckedHTTPSConnection


class _WatchedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _WatchedHTTPPool,
            "https": _WatchedHTTPSPool,
        }


def _read_at_most(response: requests.Response, limit: int) -> bytes:
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        raise AnswerTooLarge(f"answer of {declared} bytes declared", response=response)
    chunks, size = [], 0
    for chunk in response.iter_content(ANSWER_CHUNK_BYTES):
        size += len(chunk)
        if size > limit:
            raise AnswerTooLarge(f"answer longer than {limit} bytes", response=response)
        chunks.append(chunk)
    return b"".join(chunks)


def _request_within(
    session: requests.Session,
    method: str,
    url: str,
    body: bytes | None,
    headers: dict[str, str],
    *,
    timeout: float,
    deadline_s: float,
    max_answer_bytes: int | None,
) -> requests.Response:
    if max_answer_bytes is None:
        max_answer_bytes = settings.PEER_MAX_BODY_BYTES
    exchange = _Exchange(time.monotonic() + deadline_s)
    _watchdog.watch(exchange)
    _current.exchange = exchange
    try:
        # No redirects: the API never redirects, and following one reads its body unbounded.
        response = session.request(
            method,
            url,
            data=body,
            headers=headers,
            timeout=min(timeout, deadline_s),
            stream=True,
            allow_redirects=False,
        )
        try:
            content = _read_at_most(response, max_answer_bytes)
        except BaseException:
            response.raw.close()  # closes the socket: an abandoned answer is never pooled
            response.close()
            raise
    except requests.RequestException:
        if exchange.finish():
            raise DeadlineExceeded(f"no complete answer within {deadline_s} s") from None
        raise
    finally:
        exchange.finish()
        _current.exchange = None
    if exchange.expired:  # an answer cut short can look complete (no Content-Length)
        raise DeadlineExceeded(f"no complete answer within {deadline_s} s")
    response._content = content  # what response.content and .json() read
    return response


def session_for(base_url: str) -> requests.Session:
    parts = urlsplit(base_url)
    host = f"{parts.scheme}://{parts.netloc}"
    with _lock:
        session = _sessions.get(host)
        if session is None:
            session = requests.Session()
            session.trust_env = False  # never route peer traffic through an env proxy
            session.mount("http://", _WatchedAdapter())
            session.mount("https://", _WatchedAdapter())
            _sessions[host] = session
        return session


def _headers(
    method: str,
    base_url: str,
    path: str,
    body: bytes,
    key: SigningKey | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    # The signature covers the full path as the receiver sees it (prefix of base_url included).
    full_path = urlsplit(base_url).path.rstrip("/") + path
    identity = local_identity()
    signing_key = identity.signing_key if key is None else key
    headers = {
        "Authorization": protocol.sign_request(
            signing_key, node=identity.name, method=method, path=full_path, body=body, nonce=nonce
        ),
        "Content-Type": "application/json",
    }
    request_id = request_id_var.get()
    if request_id and request_id != "-":
        headers["X-Request-Id"] = request_id
    return headers


def signed_post(
    base_url: str,
    path: str,
    body: bytes,
    *,
    timeout: float | None = None,
    deadline_s: float | None = None,
    max_answer_bytes: int | None = None,
    to_login_server: bool = False,
) -> requests.Response:
    """POST body to base_url + path, signed with this node's key.

    With deadline_s, the whole exchange ends within it (DeadlineExceeded) and the answer,
    read before returning, may be at most max_answer_bytes long (AnswerTooLarge); the
    connection of an exchange cut short is closed, not reused. Unless to_login_server, in
    production a peer at an address that is not public is refused (PeerAddressRefused).
    """
    url = base_url.rstrip("/") + path
    session = session_for(base_url)
    headers = _headers("POST", base_url, path, body)
    timeout = timeout or settings.PEER_HTTP_TIMEOUT_S
    with _public_addresses_only(base_url, to_login_server=to_login_server):
        if deadline_s is None:
            return session.post(url, data=body, headers=headers, timeout=timeout)
        return _request_within(
            session,
            "POST",
            url,
            body,
            headers,
            timeout=timeout,
            deadline_s=deadline_s,
            max_answer_bytes=max_answer_bytes,
        )


def signed_get(
    base_url: str,
    path: str,
    headers: dict[str, str] | None = None,
    *,
    timeout: float | None = None,
    key: SigningKey | None = None,
    nonce: str | None = None,
    deadline_s: float | None = None,
    max_answer_bytes: int | None = None,
    to_login_server: bool = False,
) -> requests.Response:
    """GET base_url + path, signed with this node's key or the given one (empty body), with
    the given request nonce or a fresh one; the rest as for signed_post."""
    url = base_url.rstrip("/") + path
    all_headers = _headers("GET", base_url, path, b"", key, nonce)
    all_headers.update(headers or {})
    session = session_for(base_url)
    timeout = timeout or settings.PEER_HTTP_TIMEOUT_S
    with _public_addresses_only(base_url, to_login_server=to_login_server):
        if deadline_s is None:
            return session.get(url, headers=all_headers, timeout=timeout)
        return _request_within(
            session,
            "GET",
            url,
            None,
            all_headers,
            timeout=timeout,
            deadline_s=deadline_s,
            max_answer_bytes=max_answer_bytes,
        )


@contextlib.contextmanager
def signed_get_stream(
    base_url: str,
    path: str,
    headers: dict[str, str] | None = None,
    *,
    timeout: float,
    deadline_s: float,
) -> Iterator[requests.Response]:
    """GET base_url + path signed with this node's key, for a body read as a stream (a
    file): yields the response unread. Each socket read waits at most timeout, the whole
    exchange deadline_s (the connection is cut then: DeadlineExceeded), and the connection
    is closed afterwards, never pooled half-read. Peers at addresses that are not public
    are refused in production, as for signed_post."""
    url = base_url.rstrip("/") + path
    all_headers = _headers("GET", base_url, path, b"")
    all_headers.update(headers or {})
    session = session_for(base_url)
    exchange = _Exchange(time.monotonic() + deadline_s)
    _watchdog.watch(exchange)
    _current.exchange = exchange
    try:
        with _public_addresses_only(base_url, to_login_server=False):
            response = session.get(
                url,
                headers=all_headers,
                timeout=min(timeout, deadline_s),
                stream=True,
                allow_redirects=False,
            )
            try:
                yield response
            finally:
                response.raw.close()
                response.close()
    except requests.RequestException:
        if exchange.finish():
            raise DeadlineExceeded(f"no complete answer within {deadline_s} s") from None
        raise
    finally:
        exchange.finish()
        _current.exchange = None
    if exchange.expired:
        raise DeadlineExceeded(f"no complete answer within {deadline_s} s")
