"""A hostile or broken peer cannot hold a delivery thread: the whole exchange has a
deadline, the answer a size limit, and one node is sent to by one worker at a time.

The peers here are tiny socket servers on loopback that misbehave on purpose; each of
their connections ends by itself after PEER_LIFETIME_S, whatever the client does.
"""

from __future__ import annotations

import base64
import contextlib
import json
import select
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis
from django.db import connections
from django.utils import timezone

from accounts.models import User
from messaging import delivery, sending
from messaging.models import DestinationState, Message, Outbox
from p2psocial import redis_client
from p2psocial.devnet import free_port, redis_server_argv
from peers import protocol
from peers.models import DirectoryUser
from tests.helpers.messaging import (
    join_local_node,
    make_local_person,
    make_remote_node,
    make_remote_person,
)
from tests.helpers.wait import wait_for

PEER_LIFETIME_S = 20.0
DRIP_INTERVAL_S = 0.2
HUGE_ANSWER_BYTES = 100 * 1024 * 1024
ANSWER_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"


class FakePeer:
    """A peer node on 127.0.0.1 that reads each request whole, then lets answer(peer,
    conn, body) misbehave; the connection stays open for another request only if answer
    returns True. Counts connections and whether the client closed one."""

    def __init__(self, answer: Callable[[FakePeer, socket.socket, bytes], bool | None]) -> None:
        self.answer = answer
        self.node_key = None  # the key of the node it plays, once that exists
        self.connections = 0
        self.bytes_sent = 0
        self.client_closed = threading.Event()
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._handlers: list[threading.Thread] = []
        self._open: list[socket.socket] = []
        self._acceptor = threading.Thread(target=self._serve, daemon=True)
        self._acceptor.start()

    def over(self, started: float) -> bool:
        return self._stop.is_set() or time.monotonic() - started > PEER_LIFETIME_S

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            self._open.append(conn)
            thread = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            self._handlers.append(thread)
            thread.start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(PEER_LIFETIME_S)
        with conn:
            try:
                while self.answer(self, conn, _read_request(conn)):
                    pass
            except OSError:  # the client hung up (reset, broken pipe) or took too long
                self.client_closed.set()

    def close(self) -> None:
        self._stop.set()
        self._acceptor.join(timeout=5)
        self._listener.close()
        for conn in self._open:  # a kept-alive connection waits for a next request
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in self._handlers:
            thread.join(timeout=PEER_LIFETIME_S + 5)


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionResetError
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionResetError
        body += chunk
    return body


def acknowledge(peer: FakePeer, conn: socket.socket, body: bytes) -> bool:
    """What a healthy node answers: a signed acknowledgement per envelope, keep-alive."""
    raws = [base64.b64decode(e["body"]) for e in json.loads(body)["envelopes"]]
    acks = [protocol.sign_ack(peer.node_key, protocol.parse_envelope(r).id, r) for r in raws]
    answer = json.dumps({"acks": acks, "errors": []}).encode()
    conn.sendall(ANSWER_HEAD + f"Content-Length: {len(answer)}\r\n\r\n".encode() + answer)
    return True


def _drip(peer: FakePeer, conn: socket.socket, data: bytes) -> None:
    """Send data one byte every DRIP_INTERVAL_S, until the client hangs up."""
    started = time.monotonic()
    for byte in data:
        if peer.over(started):
            return
        conn.sendall(bytes([byte]))
        peer.bytes_sent += 1
        readable, _, _ = select.select([conn], [], [], DRIP_INTERVAL_S)
        if readable and not conn.recv(1):
            peer.client_closed.set()
            return


def drip_headers(peer: FakePeer, conn: socket.socket, body: bytes) -> None:
    _drip(peer, conn, ANSWER_HEAD + b"Content-Length: 2\r\n\r\n{}")


def drip_body(peer: FakePeer, conn: socket.socket, body: bytes) -> None:
    conn.sendall(ANSWER_HEAD + b"Content-Length: 100000\r\n\r\n")
    _drip(peer, conn, b" " * 100_000)


def _flood(peer: FakePeer, conn: socket.socket, head: bytes) -> None:
    started = time.monotonic()
    conn.sendall(head)
    chunk = b" " * 65536
    while peer.bytes_sent < HUGE_ANSWER_BYTES and not peer.over(started):
        conn.sendall(chunk)
        peer.bytes_sent += len(chunk)


def huge_declared(peer: FakePeer, conn: socket.socket, body: bytes) -> None:
    _flood(peer, conn, ANSWER_HEAD + f"Content-Length: {HUGE_ANSWER_BYTES}\r\n\r\n".encode())


def huge_streamed(peer: FakePeer, conn: socket.socket, body: bytes) -> None:
    _flood(peer, conn, ANSWER_HEAD + b"Connection: close\r\n\r\n")  # length: until closed


@contextlib.contextmanager
def fake_peer(answer) -> Iterator[FakePeer]:
    peer = FakePeer(answer)
    try:
        yield peer
    finally:
        peer.close()


def message_to_peer(peer: FakePeer, text: str = "hello") -> Message:
    """alice on this node ("hq") writes to rita, whose node "branch" is the fake peer."""
    if not Message.objects.exists():
        join_local_node("hq")
        make_local_person("alice")
        peer.node_key = make_remote_person(make_remote_node("branch", url=peer.url)).node.key
    alice = User.objects.get(username="alice")
    rita = DirectoryUser.objects.get(node__name="branch")
    return sending.send_message(sender=alice, recipient_username=rita.username, text=text)


def assert_queued_with_backoff(message: Message, error: str) -> None:
    message.refresh_from_db()
    assert message.status == "queued"
    row = Outbox.objects.get()
    assert (row.attempts, row.last_error, row.failed_at) == (1, error, None)
    state = DestinationState.objects.get(node="branch")
    assert state.consecutive_failures == 1 and state.next_attempt_at > timezone.now()


@pytest.fixture
def short_limits(settings):
    settings.PEER_HTTP_TIMEOUT_S = 1.0  # per socket operation: a drip never trips it
    settings.PEER_REQUEST_DEADLINE_S = 2.0
    return settings


# --- a healthy peer ------------------------------------------------------------------------
@pytest.mark.django_db
def test_a_healthy_peer_gets_every_batch_over_one_kept_alive_connection(short_limits):
    with fake_peer(acknowledge) as peer:
        message_to_peer(peer, "first")
        message_to_peer(peer, "second")
        assert delivery.deliver_pending(node="branch").delivered == 2
        message_to_peer(peer, "third")
        assert delivery.deliver_pending(node="branch").delivered == 1
        delivered = Message.objects.filter(status="delivered").order_by("id")
        assert [m.text for m in delivered] == ["first", "second", "third"]
        assert not Outbox.objects.exists()
        assert peer.connections == 1


# --- a peer that answers one byte at a time -----------------------------------------------
@pytest.mark.django_db
@pytest.mark.parametrize("answer", [drip_headers, drip_body], ids=["headers", "body"])
def test_a_trickling_peer_is_cut_off_at_the_deadline_and_backed_off(short_limits, answer):
    with fake_peer(answer) as peer:
        message = message_to_peer(peer)
        started = time.monotonic()
        result = delivery.deliver_pending(node="branch")
        elapsed = time.monotonic() - started
        assert elapsed < short_limits.PEER_REQUEST_DEADLINE_S + 5
        assert result.delivered == 0 and result.retry_in_s is not None
        assert_queued_with_backoff(message, "deadline exceeded")
        # The connection is closed, not kept for the next request.
        assert peer.client_closed.wait(timeout=5)


# --- a peer that answers far more than it may ----------------------------------------------
@pytest.mark.django_db
@pytest.mark.parametrize("answer", [huge_declared, huge_streamed], ids=["declared", "streamed"])
def test_a_huge_answer_is_refused_without_reading_it(settings, answer):
    settings.PEER_MAX_BODY_BYTES = 256 * 1024
    settings.PEER_REQUEST_DEADLINE_S = 60.0  # refused for its size, long before this
    with fake_peer(answer) as peer:
        message = message_to_peer(peer)
        result = delivery.deliver_pending(node="branch")
        assert result.delivered == 0 and result.retry_in_s is not None
        assert_queued_with_backoff(message, "answer too large")
        assert peer.client_closed.wait(timeout=10)
        # What the peer got out is the limit plus what socket buffers hold, not 100 MB.
        assert peer.bytes_sent < HUGE_ANSWER_BYTES / 2


# --- one sender per node -------------------------------------------------------------------
@pytest.fixture
def real_redis(settings, tmp_path):
    """The node locks need Redis: a private redis-server on loopback for this test."""
    port = free_port()
    server = subprocess.Popen(
        redis_server_argv(port=port, data_dir=tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    settings.REDIS_URL = f"redis://127.0.0.1:{port}/0"
    redis_client.get.cache_clear()

    def answers() -> bool:
        with contextlib.suppress(redis.RedisError):
            return bool(redis_client.get().ping())
        return False

    try:
        wait_for(answers, timeout=15, message="test Redis answers")
        yield
    finally:
        redis_client.get.cache_clear()
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.django_db(transaction=True)
def test_a_second_delivery_to_a_stuck_node_starts_no_second_request(
    settings, real_redis, monkeypatch
):
    # Longer than the old lock lifetime (PEER_HTTP_TIMEOUT_S + 5 s): a lock that expires
    # while the first request runs lets a later task open a second connection.
    settings.PEER_HTTP_TIMEOUT_S = 0.5
    settings.PEER_REQUEST_DEADLINE_S = 6.0
    monkeypatch.setattr(sending, "schedule_delivery", lambda node: None)  # no Celery here
    with fake_peer(drip_body) as peer:
        message = message_to_peer(peer)
        first: list[delivery.DeliveryResult] = []

        def deliver_in_another_worker() -> None:
            try:
                first.append(delivery.deliver_pending(node="branch"))
            finally:
                connections.close_all()

        worker = threading.Thread(target=deliver_in_another_worker, daemon=True)
        worker.start()
        wait_for(lambda: peer.bytes_sent > 0, timeout=10, message="first request answering")
        later = []
        until = time.monotonic() + PEER_LIFETIME_S
        while worker.is_alive() and time.monotonic() < until:
            later.append(delivery.deliver_pending(node="branch"))  # as the sweeper would
            time.sleep(0.25)
        worker.join(timeout=PEER_LIFETIME_S)

        assert peer.connections == 1
        assert later and later[0].busy and all(r.batches == 0 for r in later)
        assert first and first[0].retry_in_s is not None
        assert_queued_with_backoff(message, "deadline exceeded")


def test_a_deadline_that_passes_while_connecting_still_cuts_the_connection():
    """The watchdog found no socket to shut (connect still running); once the socket
    exists, the overdue exchange is cut all the same."""
    from peers import client

    class Connecting:
        sock = None

    ours, theirs = socket.socketpair()
    try:
        theirs.settimeout(5)
        exchange = client._Exchange(time.monotonic())  # overdue at once
        connection = Connecting()
        exchange.attach(connection)
        client._watchdog.watch(exchange)
        time.sleep(0.2)  # the deadline passes with no socket
        assert exchange.expired
        connection.sock = ours  # the connect completes
        assert theirs.recv(1) == b""  # shut down by the watchdog's recheck
        assert exchange.finish()
    finally:
        ours.close()
        theirs.close()


@pytest.mark.parametrize("answer", [drip_body, huge_streamed])
@pytest.mark.django_db
def test_a_login_server_that_drips_or_floods_cannot_hold_the_directory_fetch(short_limits, answer):
    """The node's own calls to the login server are bounded the same way."""
    from peers import services as peer_services
    from peers.models import NodeIdentity

    with fake_peer(answer) as login_server:
        join_local_node("hq")
        NodeIdentity.objects.filter(pk=1).update(login_server_url=login_server.url)
        started = time.monotonic()
        with pytest.raises(peer_services.LoginServerError) as refused:
            peer_services.fetch_directory()
        assert time.monotonic() - started < 2.0 + 5  # the deadline, with margin
        assert refused.value.code == "unreachable"
