"""End to end: messages between real nodes (uvicorn, Celery worker and beat, Redis),
through the browser's own send view, counted on the receiving node."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.helpers.chat import (
    chat_page,
    people_on,
    read_up_to_newest,
    send,
    status_of,
    texts,
    wait_until_listed,
)
from tests.network import Network, wait_for

pytestmark = pytest.mark.integration

PASSWORD = "a long enough passphrase 42"


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    with Network(tmp_path_factory.mktemp("messaging"), nodes=("hq", "branch")) as network:
        people_on(network, {"alice": "hq", "carol": "hq", "bob": "branch"}, PASSWORD)
        # Each node learns the other's people from the login server's directory.
        wait_until_listed(network, [("alice", "bob"), ("bob", "alice")])
        yield network


def test_a_message_crosses_nodes_intact_and_shows_delivered_then_read(net):
    text = "Board at 9 👩\u200d💼 — e\u0301 \u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627"
    send(net, "alice", "bob", text)
    wait_for(
        lambda: status_of(net, "alice", "bob", text) == "delivered",
        timeout=30,
        message="alice sees delivered",
    )
    assert chat_page(net, "bob", "alice").text.count(text) == 1  # bob opens the conversation
    assert texts(net, "bob", "alice", "in").count(text) == 1
    assert status_of(net, "alice", "bob", text) == "delivered"  # opening is not reading
    read_up_to_newest(net, "bob", "alice")  # the page showed it
    wait_for(
        lambda: status_of(net, "alice", "bob", text) == "read",
        timeout=30,
        message="alice sees read after bob's page showed it",
    )


def test_messages_to_a_node_that_was_down_arrive_once_in_order_by_themselves(net):
    branch = net.node("branch")
    branch.stop_web()
    sent = [f"while down {n}" for n in range(5)]
    try:
        for text in sent:
            send(net, "alice", "bob", text)
        assert all(status_of(net, "alice", "bob", t) == "queued" for t in sent)
    finally:
        branch.start_web()
    wait_for(
        lambda: all(t in texts(net, "bob", "alice", "in") for t in sent),
        timeout=60,
        message="every queued message on branch",
    )
    received = [t for t in texts(net, "bob", "alice", "in") if t.startswith("while down")]
    assert received == sent


def test_a_killed_worker_and_a_flushed_redis_lose_and_duplicate_nothing(net):
    hq = net.node("hq")
    first = [f"before kill {n}" for n in range(20)]
    for text in first:
        send(net, "alice", "bob", text)
    hq.stop_worker(kill=True)  # SIGKILL, most likely in the middle of a delivery
    second = [f"after flush {n}" for n in range(5)]
    for text in second:
        send(net, "alice", "bob", text)
    net.flush_redis()  # the queued delivery tasks are gone; the outbox is not
    hq.start_worker()
    wait_for(
        lambda: all(t in texts(net, "bob", "alice", "in") for t in first + second),
        timeout=90,
        message="every message on branch after the worker restarted",
    )
    received = texts(net, "bob", "alice", "in")
    assert all(received.count(t) == 1 for t in first + second)
    wait_for(
        lambda: all(
            status_of(net, "alice", "bob", t) in {"delivered", "read"} for t in first + second
        ),
        timeout=60,
        message="alice sees every message delivered",
    )


def test_a_message_between_two_people_of_one_node_takes_the_same_path(net):
    text = "same office ✓✓ \u200f\u05e2\u05d1\u05e8\u05d9\u05ea"
    send(net, "alice", "carol", text)
    wait_for(
        lambda: texts(net, "carol", "alice", "in") == [text],
        timeout=30,
        message="carol receives alice's message",
    )
    read_up_to_newest(net, "carol", "alice")
    wait_for(
        lambda: status_of(net, "alice", "carol", text) == "read",
        timeout=30,
        message="alice sees read once carol's page showed it",
    )


def _unread_requests_on(port: int) -> bool:
    """Whether a connection to this local port holds bytes its server has not read yet."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            rx_queue = int(fields[4].split(":")[1], 16)
            if local_port == port and fields[3] == "01" and rx_queue > 0:  # 01: ESTABLISHED
                return True
    return False


def test_a_worker_killed_after_the_peer_stored_its_batch_loses_and_doubles_nothing(net):
    """The receiver stores the batch but the acknowledgement dies with the worker: after
    a restart the batch goes again, is stored once and acknowledged identically."""
    hq, branch = net.node("hq"), net.node("branch")
    web = branch.processes["web"].popen
    sent = [f"in flight {n}" for n in range(5)]
    # Counted in branch's database, not through bob's page: reading would send a receipt.
    count_stored = (
        "from messaging.models import Message;"
        f"print(Message.objects.filter(direction='in', text__in={sent!r}).count())"
    )
    # Queue all five first, so that they go in one batch: with hq's worker stopped (not
    # paused: a paused worker may hold the database's write lock, and the sends wait).
    hq.stop_worker()
    web.send_signal(signal.SIGSTOP)  # branch accepts connections but reads nothing yet
    worker = None
    try:
        try:
            for text in sent:
                send(net, "alice", "bob", text)
            hq.start_worker(wait=False)
            worker = hq.processes["worker"].popen
            wait_for(
                lambda: _unread_requests_on(branch.port),
                timeout=30,  # the worker's start, then its post (a 10 s timeout, retried)
                message="hq's batch waiting in branch's socket",
                interval=0.02,
            )
            # Waiting for branch's answer: no database lock is held while a batch is out.
            os.killpg(worker.pid, signal.SIGSTOP)  # the worker will not read the answer
        finally:
            web.send_signal(signal.SIGCONT)
        wait_for(
            lambda: (
                branch.manage("shell", "-v", "0", "-c", count_stored).stdout.strip()
                == str(len(sent))
            ),
            timeout=30,
            message="branch stored the batch and answered into the void",
            interval=0.5,
        )
        hq.stop_worker(kill=True)  # SIGKILL: the acknowledgements are lost with it
        assert all(status_of(net, "alice", "bob", t) == "queued" for t in sent)
    finally:
        if worker is not None and worker.poll() is None:  # failed before the kill
            os.killpg(worker.pid, signal.SIGCONT)
    hq.start_worker()
    wait_for(
        lambda: all(status_of(net, "alice", "bob", t) in {"delivered", "read"} for t in sent),
        timeout=60,
        message="the resent batch acknowledged",
    )
    received = texts(net, "bob", "alice", "in")
    assert all(received.count(t) == 1 for t in sent)


def test_a_message_sealed_before_the_recipient_rotated_keys_still_arrives(net):
    """Runs last: bob's keys change. alice's node sealed the message to bob's old key while
    branch was down; branch refuses it as undecryptable, hq seals it again for the new
    key from the directory, and bob reads it."""
    branch = net.node("branch")
    branch.stop_web()
    text = "sealed for bob's old key 🔑"
    try:
        send(net, "alice", "bob", text)
        rotated = branch.manage("rotate_user_keys", "bob").stdout
        assert "new signing key fingerprint" in rotated
    finally:
        branch.start_web()
    wait_for(
        lambda: status_of(net, "alice", "bob", text) in {"delivered", "read"},
        timeout=60,
        message="alice sees the message delivered after bob's key change",
    )
    assert texts(net, "bob", "alice", "in").count(text) == 1
