"""A database another writer keeps locked, or whose disk is full, is a "busy, try again"
(503) or "storage full" (507) answer, never a 500 or a 20-second wait: writers outside
the queue (the admin, sessions, presence tasks, management commands) take SQLite's lock
without queueing, so the queue's head must not wait out SQLite's own busy timeout."""

from __future__ import annotations

import json
import textwrap
from contextlib import contextmanager

import pytest
from django.db import OperationalError, connection
from django.test import Client

from accounts.models import Profile, User
from messaging.models import Message, ReceivedEnvelope
from peers import protocol
from peers.auth import StorageFull, storage_refusal
from peers.models import SeenNonce
from tests.helpers.accounts import admin_logged_in, logged_in
from tests.helpers.factories import make_office_administrator, make_person
from tests.helpers.messaging import (
    join_local_node,
    make_local_person,
    make_remote_node,
    make_remote_person,
    post_signed,
    seal_from,
)
from tests.helpers.storage import (
    foreign_sqlite_writer,
    form_fields,
    new_wal_database,
    replaced,
    run_django,
)

# One queued write on a real SQLite file, in a process of its own with the production
# settings: what it did, how long it waited, and the busy timeout its connection has after.
_QUEUED_WRITE = """
import json, time
from django.db import OperationalError, connection
from peers.auth import WriterBusy, write_transaction
started = time.monotonic()
try:
    with write_transaction():
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO notes (text) VALUES ('queued')")
    outcome = "written"
except WriterBusy as busy:
    outcome = busy.code
except OperationalError as error:
    outcome = f"OperationalError: {error}"
waited_s = time.monotonic() - started
with connection.cursor() as cursor:
    cursor.execute("PRAGMA busy_timeout")
    (busy_timeout_ms,) = cursor.fetchone()
print(json.dumps({"outcome": outcome, "waited_s": waited_s, "busy_timeout_ms": busy_timeout_ms}))
"""


def queued_write(tmp_path, *, wait_s: float) -> dict:
    result = run_django(
        textwrap.dedent(_QUEUED_WRITE),
        data_dir=tmp_path,
        env={"P2P_WRITER_LOCK_WAIT_S": str(wait_s)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def database(tmp_path):
    new_wal_database(tmp_path / "db.sqlite3")
    return tmp_path / "db.sqlite3"


def test_a_queued_write_behind_a_foreign_writer_is_refused_busy_within_the_bound(
    tmp_path, database
):
    with foreign_sqlite_writer(database):
        answer = queued_write(tmp_path, wait_s=0.5)
    assert answer["outcome"] == "writer_busy"
    assert answer["waited_s"] < 3  # not SQLite's busy timeout of 20 s


def test_a_queued_write_goes_through_once_the_foreign_writer_commits(tmp_path, database):
    import sqlite3

    with foreign_sqlite_writer(database, at_most_s=0.5):  # commits by itself after 0.5 s
        answer = queued_write(tmp_path, wait_s=10)
    assert answer["outcome"] == "written"
    assert answer["waited_s"] < 5
    texts = sqlite3.connect(database).execute("SELECT text FROM notes").fetchall()
    assert texts == [("queued",)]


def test_the_connection_keeps_its_busy_timeout_for_writes_outside_the_queue(tmp_path, database):
    with foreign_sqlite_writer(database):
        answer = queued_write(tmp_path, wait_s=0.2)
    assert answer["outcome"] == "writer_busy"
    assert answer["busy_timeout_ms"] == 20000


# --- a view's own write refused by SQLite --------------------------------------------------
@contextmanager
def sqlite_refuses(table: str, message: str):
    """Make this process's writes to table fail as SQLite fails them (the lock or the disk)."""

    def refuse(execute, sql, params, many, context):
        if sql.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE")) and table in sql:
            raise OperationalError(message)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(refuse):
        yield


@pytest.mark.django_db
def test_a_profile_save_sqlite_refuses_as_locked_is_a_busy_page_not_a_500(caplog):
    _, secret = make_person("carol", position="Clerk")
    client = logged_in(Client(), "carol", secret)
    form = {"full_name": "Carol", "position": "Head clerk", "location": "", "description": ""}
    with sqlite_refuses("accounts_profile", "database is locked"):
        response = client.post("/profile/", form)
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert "Busy, try again" in response.content.decode()
    assert Profile.objects.get(user__username="carol").position == "Clerk"
    assert "database is locked" not in caplog.text


@pytest.mark.django_db
def test_an_admin_change_form_sqlite_refuses_as_locked_is_a_busy_page():
    _, admin_secret = make_office_administrator("olga")
    dave, _ = make_person("dave", position="Driver")
    client = admin_logged_in(Client(), "olga", admin_secret)
    url = f"/admin/accounts/user/{dave.pk}/change/"
    fields = replaced(form_fields(client.get(url).content.decode()), profile__0__position="Pilot")
    with sqlite_refuses("accounts_profile", "database is locked"):
        response = client.post(url, dict(fields))
    assert response.status_code == 503
    assert "Busy, try again" in response.content.decode()
    assert Profile.objects.get(user=dave).position == "Driver"
    assert client.post(url, dict(fields)).status_code == 302  # the same form, once free
    assert Profile.objects.get(user=dave).position == "Pilot"


@pytest.mark.django_db(transaction=True)
def test_a_batch_arriving_on_a_full_disk_is_refused_507_and_nothing_is_stored():
    join_local_node("hq")
    alice = make_local_person("alice")
    bob = make_remote_person(make_remote_node("branch"), "bob")
    body = protocol.encode_batch([seal_from(bob, alice)])
    with sqlite_refuses("messaging_message", "database or disk is full"):
        response = post_signed(Client(), bob.node, body)
    assert response.status_code == 507
    assert response.json()["error"]["code"] == "storage_full"
    assert not ReceivedEnvelope.objects.exists()
    assert not SeenNonce.objects.exists()  # the same request is accepted once space is back
    assert post_signed(Client(), bob.node, body).status_code == 200


@pytest.mark.django_db(transaction=True)
def test_a_person_sending_on_a_full_disk_gets_a_page_saying_nothing_was_saved():
    join_local_node("hq")
    bob = make_remote_person(make_remote_node("branch"), "bob")
    _, secret = make_person("erin")
    client = logged_in(Client(), "erin", secret)
    with sqlite_refuses("messaging_message", "database or disk is full"):
        response = client.post(f"/chat/{bob.username}/", {"text": "hello"})
    assert response.status_code == 507
    page = response.content.decode()
    assert "<h1>Storage full</h1>" in page and "nothing of what you sent was saved" in page
    assert not Message.objects.exists()


def test_postgresqls_disk_full_error_is_storage_full_too():
    class DiskFull(Exception):
        sqlstate = "53100"  # PostgreSQL's disk_full, as psycopg reports it

    error = OperationalError("could not extend file: No space left on device")
    error.__cause__ = DiskFull()
    assert isinstance(storage_refusal(error), StorageFull)
    assert storage_refusal(OperationalError("some other failure")) is None


@pytest.mark.django_db
def test_a_page_still_shows_when_the_activity_update_is_refused_as_disk_full():
    """The presence bookkeeping before every page is best effort: a full disk leaves the
    last activity as it was instead of turning the person's page into a 500."""
    user, secret = make_person("dora")
    client = logged_in(Client(), "dora", secret)
    User.objects.filter(pk=user.pk).update(last_activity=None)

    with sqlite_refuses("accounts_user", "database or disk is full"):
        response = client.get("/users/")

    assert response.status_code == 200
    assert User.objects.get(pk=user.pk).last_activity is None
