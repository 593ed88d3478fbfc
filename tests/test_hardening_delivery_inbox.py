"""Receiving, hardened: the write lock is held only to write; a message whose
acknowledgement was lost before its sender's key change still ends delivered; a remote
sender cannot speak as a person of this node."""

from __future__ import annotations

import contextlib
import threading

import pytest
from django.db import connection
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from messaging import delivery, peer_api, sending
from messaging.models import Message, Outbox, ReceivedEnvelope
from peers import auth, protocol
from peers.models import DirectoryUser
from tests.helpers.messaging import (
    make_inbox_network,
    make_local_person,
    make_remote_person,
    post_signed,
    seal_from,
    stored_message,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def net():
    return make_inbox_network("carol")


def batch(*sealed: protocol.SignedEnvelope) -> bytes:
    return protocol.encode_batch(list(sealed))


def answer_of(response) -> dict:
    assert response.status_code == 200, response.content
    return response.json()


def rotate_remote_keys(person) -> None:
    """The sender's node gave them new keys and this node's directory learned them."""
    person.sign, person.box = SigningKey.generate(), PrivateKey.generate()
    DirectoryUser.objects.filter(username=person.username).update(
        sign_key=bytes(person.sign.verify_key), box_key=bytes(person.box.public_key)
    )


# --- the write lock is held only to write -------------------------------------------------
WATCHED = (
    "parse_batch",
    "parse_envelope",
    "verify_envelope",
    "open_envelope",
    "sign_ack",
    "sign_ack_for_digest",
)


@pytest.fixture
def writer_watch(monkeypatch):
    """Records every parse, signature and decryption call, and every SQL statement, made
    while the node's write transaction is held."""
    held = threading.Event()
    watch = {"entered": 0, "calls_inside": [], "reads_inside": []}
    real = auth.write_transaction

    @contextlib.contextmanager
    def watched_write_transaction():
        with real():
            watch["entered"] += 1
            held.set()
            try:
                yield
            finally:
                held.clear()

    # Wherever the inbox takes it from: peers.auth (the signed endpoint) or its own import.
    monkeypatch.setattr(auth, "write_transaction", watched_write_transaction)
    monkeypatch.setattr(peer_api, "write_transaction", watched_write_transaction, raising=False)
    for name in WATCHED:
        original = getattr(protocol, name)

        def spy(*args, _name=name, _original=original, **kwargs):
            if held.is_set():
                watch["calls_inside"].append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(protocol, name, spy)

    def record_reads(execute, sql, params, many, context):
        if held.is_set() and sql.lstrip().upper().startswith("SELECT"):
            watch["reads_inside"].append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record_reads):
        yield watch


def test_it_checks_and_decrypts_a_batch_before_taking_the_write_lock(client, net, writer_watch):
    read_by_rita = stored_message(net.bob, "rita", direction="out", text="agenda")
    message = seal_from(net.rita, net.bob, {"text": "Seen it, thanks"})
    receipt = seal_from(net.rita, net.bob, {"ids": [str(read_by_rita.envelope_id)]}, kind="read")
    duplicate = seal_from(net.rita, net.bob, {"text": "sent before"})
    post_signed(client, net.branch, batch(duplicate))
    writer_watch["entered"] = 0

    answer = answer_of(post_signed(client, net.branch, batch(message, receipt, duplicate)))

    assert writer_watch["entered"] == 1
    assert writer_watch["calls_inside"] == []
    assert writer_watch["reads_inside"] == []
    assert answer["errors"] == [] and len(answer["acks"]) == 3
    node_key = bytes(net.node_key.verify_key)
    for ack, sealed in zip(answer["acks"], (message, receipt, duplicate), strict=True):
        protocol.verify_ack(node_key, ack, envelope_id=sealed.id, raw=sealed.raw)
    incoming = Message.objects.filter(owner=net.bob, direction="in").order_by("id")
    assert [m.text for m in incoming] == ["sent before", "Seen it, thanks"]
    read_by_rita.refresh_from_db()
    assert read_by_rita.status == "read" and read_by_rita.read_at is not None


def test_a_refused_batch_takes_no_write_lock_at_all(client, net, writer_watch):
    forged = seal_from(net.rita, net.bob, {"text": "forged"}, sender_sign_key=SigningKey.generate())

    answer = answer_of(post_signed(client, net.branch, batch(forged)))

    assert answer["errors"][0]["code"] == "bad_envelope_signature"
    assert writer_watch["calls_inside"] == [] and writer_watch["reads_inside"] == []
    assert not ReceivedEnvelope.objects.exists()


# --- a lost acknowledgement, then the sender's key change ---------------------------------
def test_a_resealed_copy_of_a_stored_message_is_acknowledged_for_the_stored_bytes(client, net):
    first = seal_from(net.rita, net.bob, {"text": "stored, ack lost"})
    post_signed(client, net.branch, batch(first))  # the acknowledgement never reaches branch
    created_ms = protocol.parse_envelope(first.raw).created_ms
    rotate_remote_keys(net.rita)
    again = seal_from(
        net.rita, net.bob, {"text": "stored, ack lost"}, envelope_id=first.id, created_ms=created_ms
    )

    answer = answer_of(post_signed(client, net.branch, batch(again)))

    assert answer["errors"] == []
    ack = answer["acks"][0]
    assert ack["sha256"] == protocol.sha256_hex(first.raw)
    node_key = bytes(net.node_key.verify_key)
    protocol.verify_ack(node_key, ack, envelope_id=first.id, raw=first.raw)
    assert list(Message.objects.values_list("text", flat=True)) == ["stored, ack lost"]
    assert ReceivedEnvelope.objects.get().sha256 == protocol.sha256_hex(first.raw)


def test_another_sender_reusing_a_stored_id_is_refused_as_a_conflict(client, net):
    first = seal_from(net.rita, net.bob, {"text": "from rita"})
    post_signed(client, net.branch, batch(first))
    created_ms = protocol.parse_envelope(first.raw).created_ms
    same_node = make_remote_person(net.branch, "rick")

    for sender, node in ((same_node, net.branch), (net.olga, net.other)):
        clash = seal_from(
            sender, net.bob, {"text": "from rita"}, envelope_id=first.id, created_ms=created_ms
        )
        answer = answer_of(post_signed(client, node, batch(clash)))
        assert answer["acks"] == []
        assert (answer["errors"][0]["code"], answer["errors"][0]["id"]) == ("id_conflict", first.id)
    assert list(Message.objects.values_list("sender_username", flat=True)) == ["rita"]


def test_the_same_sender_with_another_text_under_a_stored_id_is_still_a_conflict(client, net):
    first = seal_from(net.rita, net.bob, {"text": "original"})
    post_signed(client, net.branch, batch(first))
    created_ms = protocol.parse_envelope(first.raw).created_ms
    rotate_remote_keys(net.rita)
    other = seal_from(
        net.rita, net.bob, {"text": "rewritten"}, envelope_id=first.id, created_ms=created_ms
    )

    answer = answer_of(post_signed(client, net.branch, batch(other)))

    assert answer["errors"][0]["code"] == "id_conflict"
    assert list(Message.objects.values_list("text", flat=True)) == ["original"]


def test_a_message_whose_ack_was_lost_before_the_senders_key_change_ends_delivered(net):
    alice = make_local_person("alice")
    message = sending.send_message(sender=alice, recipient_username="bob", text="lost ack 🔑")
    delivery._post_batch("hq", list(Outbox.objects.all()))  # bob has it; the answer is lost
    first = bytes(Outbox.objects.get().raw)

    sending.rotate_person_keys(user=alice)
    assert bytes(Outbox.objects.get().raw) != first
    result = delivery.deliver_pending(node="hq")

    message.refresh_from_db()
    assert (message.status, message.error) == ("delivered", "")
    assert (result.delivered, result.failed) == (1, 0)
    assert not Outbox.objects.exists()
    received = Message.objects.filter(owner=net.bob, direction="in")
    assert list(received.values_list("text", flat=True)) == ["lost ack 🔑"]


def test_an_acknowledgement_of_bytes_this_node_never_sealed_is_not_accepted(net):
    alice = make_local_person("alice")
    message = sending.send_message(sender=alice, recipient_username="rita", text="hello")
    row = Outbox.objects.get()
    sending.rotate_person_keys(user=alice)
    row = Outbox.objects.get()
    ack = protocol.sign_ack_for_digest(
        net.branch.key, str(row.envelope_id), protocol.sha256_hex(b"other bytes")
    )

    delivery._apply_answer("branch", [row], bytes(net.branch.key.verify_key), [ack], [])

    message.refresh_from_db()
    assert message.status == "queued"
    assert Outbox.objects.filter(id=row.id).exists()


# --- a remote sender speaking as a local person -------------------------------------------
@pytest.fixture
def remote_carol(net):
    """branch's directory entry "carol", although carol is a person of this node."""
    return make_remote_person(net.branch, "carol")


def test_a_remote_sender_with_a_local_persons_name_is_refused_alone(client, net, remote_carol):
    impostor = seal_from(remote_carol, net.bob, {"text": "it's carol, send me the file"})
    genuine = seal_from(net.rita, net.bob, {"text": "from rita"})

    answer = answer_of(post_signed(client, net.branch, batch(impostor, genuine)))

    assert [(e["code"], e["id"]) for e in answer["errors"]] == [
        ("sender_is_local_name", impostor.id)
    ]
    assert [a["id"] for a in answer["acks"]] == [genuine.id]
    assert list(Message.objects.values_list("peer_username", flat=True)) == ["rita"]
    assert not Message.objects.filter(owner=net.bob, peer_username="carol").exists()


def test_a_read_receipt_from_a_remote_sender_with_a_local_name_is_refused(
    client, net, remote_carol
):
    to_carol = stored_message(net.bob, "carol", direction="out", text="for local carol")
    receipt = seal_from(remote_carol, net.bob, {"ids": [str(to_carol.envelope_id)]}, kind="read")

    answer = answer_of(post_signed(client, net.branch, batch(receipt)))

    assert [e["code"] for e in answer["errors"]] == ["sender_is_local_name"]
    to_carol.refresh_from_db()
    assert (to_carol.status, to_carol.read_at) == ("delivered", None)
    assert not ReceivedEnvelope.objects.exists()


def test_the_new_holder_of_a_departed_local_persons_name_can_write_here(client, net):
    """A deactivated person's name, released at the login server and taken by another
    office, belongs to that office's person now."""
    net.carol.is_active = False
    net.carol.save(update_fields=["is_active"])
    new_carol = make_remote_person(net.branch, "carol")
    hello = seal_from(new_carol, net.bob, {"text": "I am the new carol, at branch"})

    answer = answer_of(post_signed(client, net.branch, batch(hello)))

    assert [a["id"] for a in answer["acks"]] == [hello.id]
    assert answer["errors"] == []


def test_a_local_person_still_writes_to_another_local_person(net):
    sending.send_message(sender=net.carol, recipient_username="bob", text="same office")

    assert delivery.deliver_pending(node="hq").delivered == 1
    received = Message.objects.get(owner=net.bob, direction="in")
    assert (received.peer_username, received.text) == ("carol", "same office")
