"""The per-node delivery lock, hardened: short-lived and kept alive by a heartbeat, so a
slow exchange keeps it (never two exchanges with one node at once) and a SIGKILLed
worker's lock expires within DELIVERY_LOCK_TTL_S, after which another worker delivers.

The peer here is a small HTTP server on loopback that acknowledges every batch after a
delay and counts the requests it is answering at once.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.db import connections

from accounts.models import User
from messaging import delivery as flow
from messaging import locks, sending
from messaging.models import Message
from p2psocial import redis_client
from p2psocial.devnet import BASE_DIR
from peers import protocol
from tests.helpers.messaging import (
    join_local_node,
    make_local_person,
    make_remote_node,
    make_remote_person,
)
from tests.helpers.redis import running_redis
from tests.helpers.wait import wait_for

# Short, to keep the tests quick, but with room for a loaded CI machine: the heartbeat
# thread must get the CPU at least once per TTL, and a 1 s TTL was missed under load.
TTL_S = 2.0


class SlowPeer:
    """Node "branch" on 127.0.0.1: acknowledges each batch answer_after_s after reading it
    (or when released), counting requests and the most it answered at once."""

    def __init__(self, answer_after_s: float) -> None:
        self.answer_after_s = answer_after_s
        self.node_key = None
        self.requests = 0
        self.most_at_once = 0
        self._at_once = 0
        self._count = threading.Lock()
        self.released = threading.Event()
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with peer._count:
                    peer.requests += 1
                    peer._at_once += 1
                    peer.most_at_once = max(peer.most_at_once, peer._at_once)
                try:
                    peer.released.wait(peer.answer_after_s)  # the slow part of the peer
                    answer = peer.acknowledge(body)
                finally:
                    with peer._count:
                        peer._at_once -= 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def acknowledge(self, body: bytes) -> bytes:
        raws = [base64.b64decode(e["body"]) for e in json.loads(body)["envelopes"]]
        acks = [protocol.sign_ack(self.node_key, protocol.parse_envelope(r).id, r) for r in raws]
        return json.dumps({"acks": acks, "errors": []}).encode()

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def slow_peer(answer_after_s: float) -> Iterator[SlowPeer]:
    peer = SlowPeer(answer_after_s)
    try:
        yield peer
    finally:
        peer.close()


def message_to(peer: SlowPeer, text: str = "hello", *, again: bool = False) -> Message:
    """alice on this node ("hq") writes to rita, whose node "branch" is the peer."""
    if not again:
        join_local_node("hq")
        make_local_person("alice")
        peer.node_key = make_remote_person(
            make_remote_node("branch", url=peer.url), "rita"
        ).node.key
    alice = User.objects.get(username="alice")
    return sending.send_message(sender=alice, recipient_username="rita", text=text)


@pytest.fixture
def delivery(settings, tmp_path, monkeypatch):
    """A private Redis for the node locks, a short lock TTL, no Celery."""
    settings.DELIVERY_LOCK_TTL_S = TTL_S
    settings.PEER_REQUEST_DEADLINE_S = 30.0
    monkeypatch.setattr(sending, "schedule_delivery", lambda node: None)
    monkeypatch.setattr(flow, "schedule_delivery", lambda node: None)
    with running_redis(tmp_path) as url:
        settings.REDIS_URL = url
        redis_client.get.cache_clear()
        try:
            yield settings
        finally:
            redis_client.get.cache_clear()


@pytest.mark.django_db(transaction=True)
def test_the_lock_is_kept_through_an_exchange_longer_than_its_ttl(delivery):
    with slow_peer(answer_after_s=4 * TTL_S) as peer:
        message = message_to(peer)
        first: list[flow.DeliveryResult] = []

        def deliver_in_another_worker() -> None:
            try:
                first.append(flow.deliver_pending(node="branch"))
            finally:
                connections.close_all()

        worker = threading.Thread(target=deliver_in_another_worker, daemon=True)
        worker.start()
        wait_for(lambda: peer.requests == 1, timeout=10, message="the first exchange started")
        later = []
        while worker.is_alive():  # as the sweeper and other workers would, all along
            later.append(flow.deliver_pending(node="branch"))
            worker.join(timeout=0.1)

        assert (peer.requests, peer.most_at_once) == (1, 1)
        assert later and all(r.busy and r.batches == 0 for r in later)
        assert first and first[0].delivered == 1
        message.refresh_from_db()
        assert message.status == "delivered"


@pytest.mark.django_db(transaction=True)
def test_a_worker_that_lost_the_lock_applies_its_answer_and_starts_no_other_exchange(delivery):
    delivery.DELIVERY_BATCH_MAX_ENVELOPES = 1
    with slow_peer(answer_after_s=4 * TTL_S) as peer:
        first, second = message_to(peer, "first"), message_to(peer, "second", again=True)
        result: list[flow.DeliveryResult] = []

        def deliver_in_another_worker() -> None:
            try:
                result.append(flow.deliver_pending(node="branch"))
            finally:
                connections.close_all()

        worker = threading.Thread(target=deliver_in_another_worker, daemon=True)
        worker.start()
        wait_for(lambda: peer.requests == 1, timeout=10, message="the first exchange started")
        # The lock expired (say this worker was frozen) and another worker took it.
        (name,) = redis_client.get().keys("p2p:messaging:deliver-lock:*")
        redis_client.get().set(name, b"another worker", px=60 * 1000)
        worker.join(timeout=30)

        assert result and result[0].busy and result[0].delivered == 1
        assert peer.requests == 1
        first.refresh_from_db()
        second.refresh_from_db()
        assert (first.status, second.status) == ("delivered", "queued")


HOLDER = """
import threading, django
django.setup()
from django.conf import settings
settings.DELIVERY_LOCK_TTL_S = {ttl!r}
from accounts.models import User
from messaging import locks
with locks.node_lock("branch") as lock:
    print("holding" if lock else "not holding", flush=True)
    threading.Event().wait()
"""


@pytest.mark.django_db(transaction=True)
def test_the_lock_of_a_killed_worker_expires_within_its_ttl_and_another_delivers(delivery):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER.format(ttl=TTL_S)],
        cwd=BASE_DIR,
        env={**os.environ, "REDIS_URL": delivery.REDIS_URL},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        with slow_peer(answer_after_s=0) as peer:
            message = message_to(peer)
            assert flow.deliver_pending(node="branch").busy  # its heartbeat keeps it

            holder.send_signal(signal.SIGKILL)  # mid-delivery: no release, no heartbeat
            holder.wait(timeout=10)

            # The old lock lived PEER_REQUEST_DEADLINE_S + 15 s (45 s by default).
            wait_for(
                lambda: flow.deliver_pending(node="branch").delivered == 1,
                timeout=TTL_S + 5,
                message="another worker delivers once the dead worker's lock expired",
            )
            message.refresh_from_db()
            assert message.status == "delivered"
            assert peer.requests == 1
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=10)
        holder.stdout.close()


@pytest.mark.django_db(transaction=True)
def test_a_task_that_finds_the_node_busy_looks_once_more_when_the_lock_would_expire(
    delivery, monkeypatch
):
    from messaging import tasks

    runs: list[flow.DeliveryResult] = []
    deliver_pending = flow.deliver_pending

    def counted(*, node: str) -> flow.DeliveryResult:
        runs.append(deliver_pending(node=node))
        return runs[-1]

    monkeypatch.setattr(flow, "deliver_pending", counted)
    with locks.node_lock("branch") as held:  # a live worker delivers to branch
        assert held
        tasks.deliver_to_node.apply(args=["branch"])  # eager: the retry runs at once

    assert len(runs) == 2 and all(r.busy for r in runs)
    assert 0 < runs[0].busy_for_s <= TTL_S
