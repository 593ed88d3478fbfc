"""The wait for the SQLite writer lock is bounded: a foreign writer that keeps it makes
writes answer "busy, retry" (WriterBusy, 503 with Retry-After) instead of queueing."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.db import connection
from django.test import Client

from messaging import sending
from messaging.models import Message, ReceivedEnvelope
from peers import auth, protocol
from tests.helpers.accounts import logged_in
from tests.helpers.factories import make_person
from tests.helpers.messaging import (
    join_local_node,
    make_local_person,
    make_remote_node,
    make_remote_person,
    post_signed,
    seal_from,
)

# Outside a test transaction, so that writes queue for the writer lock as in production.
pytestmark = pytest.mark.django_db(transaction=True)

# Holds the flock until the test closes its stdin, and gives up after 15 s on its own so
# that a wait without a bound fails the test instead of hanging it.
_HOLD_LOCK = """
import fcntl, os, select, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
select.select([sys.stdin], [], [], 15)
"""


@pytest.fixture
def lock_path(tmp_path, monkeypatch, settings) -> str:
    """A database file name for the writer lock (the test database itself is in memory)."""
    monkeypatch.setitem(connection.settings_dict, "NAME", str(tmp_path / "db.sqlite3"))
    settings.WRITER_LOCK_WAIT_S = 0.2
    return f"{tmp_path / 'db.sqlite3'}.writer-lock"


@contextmanager
def foreign_writer(path: str) -> Iterator[None]:
    """Another process holding the writer lock file's flock."""
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline() == "locked\n"
        yield
    finally:
        child.stdin.close()
        child.wait(timeout=30)
        child.stdout.close()


@pytest.fixture
def net():
    join_local_node("hq")
    branch = make_remote_node("branch")
    return make_local_person("alice"), make_remote_person(branch, "bob")


def test_a_send_is_refused_as_busy_while_a_foreign_writer_holds_the_lock(lock_path, net):
    alice, bob = net
    with foreign_writer(lock_path), pytest.raises(auth.WriterBusy) as refused:
        sending.send_message(sender=alice, recipient_username=bob.username, text="hi")
    assert refused.value.code == "writer_busy"
    assert refused.value.status == 503
    assert not Message.objects.exists()


def test_sending_works_again_once_the_foreign_writer_is_gone(lock_path, net):
    alice, bob = net
    with foreign_writer(lock_path), pytest.raises(auth.WriterBusy):
        sending.send_message(sender=alice, recipient_username=bob.username, text="hi")
    sending.send_message(sender=alice, recipient_username=bob.username, text="hi again")
    assert list(Message.objects.values_list("text", flat=True)) == ["hi again"]


def test_a_free_lock_is_taken_without_sleeping(lock_path, net, monkeypatch):
    def no_sleep(seconds: float) -> None:
        raise AssertionError(f"slept {seconds} s for a free lock")

    monkeypatch.setattr(auth.time, "sleep", no_sleep)
    alice, bob = net
    sending.send_message(sender=alice, recipient_username=bob.username, text="hi")
    assert Message.objects.count() == 1


def test_the_peer_api_answers_503_json_with_retry_after_while_busy(lock_path, net, settings):
    settings.WRITER_LOCK_WAIT_S = 1.5
    alice, bob = net
    sealed = seal_from(bob, alice)
    body = protocol.encode_batch([sealed])
    with foreign_writer(lock_path):
        response = post_signed(Client(), bob.node, body)
    assert response.status_code == 503
    assert response["Retry-After"] == "2"
    assert response.json()["error"]["code"] == "writer_busy"
    assert not ReceivedEnvelope.objects.exists()


def test_a_person_sending_while_busy_gets_a_try_again_page(lock_path, net):
    _, bob = net
    _, secret = make_person("carol")
    client = logged_in(Client(), "carol", secret)
    with foreign_writer(lock_path):
        response = client.post(f"/chat/{bob.username}/", {"text": "hi"})
    assert response.status_code == 503
    assert response["Retry-After"] == "1"
    assert "Busy, try again" in response.content.decode()
    assert not Message.objects.exists()
