"""Read receipts: the page marks read only what its script showed, through a CSRF-protected
POST; receipts that overtake an acknowledgement or fail to decrypt still end "read"."""

from __future__ import annotations

import re
import time
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from accounts import services as account_services
from messaging import delivery, sending
from messaging.models import Message, Outbox
from peers import protocol
from tests.helpers.factories import DEFAULT_PASSWORD, code_at_step, make_person
from tests.helpers.messaging import (
    join_local_node,
    make_local_person,
    make_remote_node,
    make_remote_person,
    opened_by,
    post_signed,
    refusal,
    rotate_remote_box_key,
    seal_from,
    stored_message,
)

pytestmark = pytest.mark.django_db


def logged_in(username: str, *, verified: bool = True, enforce_csrf_checks: bool = False):
    """A client with username's session; enforce_csrf_checks: one that, like a browser,
    sends no CSRF token unless told (it logs in through a lenient client)."""
    user, secret = make_person(username)
    client = Client()
    client.post("/login/", {"username": username, "password": DEFAULT_PASSWORD})
    if verified:
        client.post("/login/code/", {"code": code_at_step(secret, int(time.time() // 30))})
    if enforce_csrf_checks:
        strict = Client(enforce_csrf_checks=True)
        strict.cookies = client.cookies
        client = strict
    client.user = user
    return client


@pytest.fixture
def rita():
    join_local_node("hq")
    return make_remote_person(make_remote_node("branch"), "rita")


@pytest.fixture
def alice(rita):
    return logged_in("alice")


def from_rita(alice, *texts: str) -> list[Message]:
    """Messages rita sent alice, delivered and unread, oldest first."""
    return [
        stored_message(alice.user, "rita", direction="in", text=t, created_ms=n)
        for n, t in enumerate(texts, start=1)
    ]


def unread_texts(user) -> list[str]:
    rows = Message.objects.filter(owner=user, direction="in", read_at__isnull=True)
    return list(rows.order_by("created_ms").values_list("text", flat=True))


def receipt_ids() -> list[list[str]]:
    return [row.read_ids for row in Outbox.objects.filter(kind="read").order_by("id")]


def read_up_to(client: Client, peer: str, message_id, **extra):
    return client.post(
        f"/chat/{peer}/read/", {"up_to": message_id}, HTTP_ACCEPT="application/json", **extra
    )


# --- the page and its poll mark nothing read ---------------------------------------------------
def test_opening_the_conversation_marks_nothing_read(alice):
    from_rita(alice, "one", "two")
    page = alice.get("/chat/rita/").content.decode()
    assert "one" in page and "two" in page
    assert page.count('data-unread="1"') == 2
    assert unread_texts(alice.user) == ["one", "two"]
    assert not Outbox.objects.exists()


def test_the_poll_marks_nothing_read(alice):
    from_rita(alice, "one")
    [message] = alice.get("/chat/rita/messages.json?after=0").json()["messages"]
    assert message["text"] == "one"
    assert unread_texts(alice.user) == ["one"]


# --- the POST from the page's script ---------------------------------------------------------
def test_posting_a_shown_message_marks_read_up_to_it_only(alice):
    first, second, _ = from_rita(alice, "one", "two", "three")
    response = read_up_to(alice, "rita", second.id)
    assert (response.status_code, response.json()["read"]) == (200, 2)
    assert unread_texts(alice.user) == ["three"]
    assert receipt_ids() == [[str(first.envelope_id), str(second.envelope_id)]]


def test_marking_read_again_changes_nothing(alice):
    _, second = from_rita(alice, "one", "two")
    read_up_to(alice, "rita", second.id)
    again = read_up_to(alice, "rita", second.id)
    assert (again.status_code, again.json()["read"]) == (200, 0)
    assert len(receipt_ids()) == 1


def test_a_message_with_an_earlier_sender_time_is_marked_in_conversation_order(alice):
    """Order is the sender's time, then id: a late arrival written earlier counts as above."""
    [shown] = from_rita(alice, "shown")
    late = stored_message(alice.user, "rita", direction="in", text="late", created_ms=0)
    after = stored_message(alice.user, "rita", direction="in", text="after", created_ms=5)
    read_up_to(alice, "rita", shown.id)
    assert unread_texts(alice.user) == ["after"]
    assert late.id > shown.id and after.id > shown.id


def test_the_answer_says_which_messages_the_page_still_shows_unread(alice):
    """The page adds arrivals in arrival order; the server reads by the sender's time. A
    late arrival written earlier, read as the anchor, leaves a newer one unread, and the
    page must keep watching that one instead of clearing it by its place on screen."""
    [newer] = from_rita(alice, "newer")
    late = stored_message(alice.user, "rita", direction="in", text="late", created_ms=0)

    answer = read_up_to(alice, "rita", late.id).json()

    assert answer == {"read": 1, "unread_ids": [newer.id]}
    assert unread_texts(alice.user) == ["newer"]


def test_a_get_of_the_read_endpoint_is_refused(alice):
    [message] = from_rita(alice, "one")
    response = alice.get(f"/chat/rita/read/?up_to={message.id}")
    assert (response.status_code, response["Allow"]) == (405, "POST")
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert unread_texts(alice.user) == ["one"]


def test_the_read_endpoint_needs_a_csrf_token(rita):
    strict = logged_in("alice", enforce_csrf_checks=True)
    [message] = from_rita(strict, "one")
    page = strict.get("/chat/rita/").content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)

    assert read_up_to(strict, "rita", message.id).status_code == 403
    assert unread_texts(strict.user) == ["one"]
    response = read_up_to(strict, "rita", message.id, HTTP_X_CSRFTOKEN=token)
    assert (response.status_code, response.json()) == (200, {"read": 1, "unread_ids": []})


def test_the_read_endpoint_needs_a_verified_session(rita):
    half = logged_in("alice", verified=False)
    [message] = from_rita(half, "one")
    for client in (half, Client()):
        response = read_up_to(client, "rita", message.id)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "login_required"
    assert unread_texts(half.user) == ["one"]


def test_another_persons_conversation_is_refused(alice):
    bob = make_local_person("bob")
    bobs = stored_message(bob, "rita", direction="in", text="for bob")
    [alices] = from_rita(alice, "for alice")
    make_local_person("carol")

    elsewhere = read_up_to(alice, "rita", bobs.id)  # bob's conversation with rita
    other_peer = read_up_to(alice, "carol", alices.id)  # alice's message, wrong conversation
    for response in (elsewhere, other_peer):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "unknown_message"
    assert unread_texts(bob) == ["for bob"] and unread_texts(alice.user) == ["for alice"]
    assert not Outbox.objects.exists()


@pytest.mark.parametrize("up_to", ["", "x", "-1", "9" * 30])
def test_a_bad_message_id_is_a_400(alice, up_to):
    from_rita(alice, "one")
    response = read_up_to(alice, "rita", up_to)
    assert (response.status_code, response.json()["error"]["code"]) == (400, "invalid_field")
    assert unread_texts(alice.user) == ["one"]


# --- receipts that arrive out of order or do not decrypt -------------------------------------
def test_a_receipt_that_overtakes_the_acknowledgement_leaves_the_message_read(client, rita):
    """The sender's row exists before its envelope leaves, so the receipt that "arrives
    first" is one that beats the acknowledgement (lost, or still in a retried batch)."""
    alice = make_local_person("alice")
    message = sending.send_message(sender=alice, recipient_username="rita", text="hi")
    row = Outbox.objects.get()
    receipt = seal_from(rita, alice, {"ids": [str(message.envelope_id)]}, kind="read")
    post_signed(client, rita.node, protocol.encode_batch([receipt]))
    message.refresh_from_db()
    assert message.status == "read"

    ack = protocol.sign_ack(rita.node.key, str(row.envelope_id), bytes(row.raw))
    delivery._apply_answer("branch", [row], bytes(rita.node.key.verify_key), [ack], [])

    message.refresh_from_db()
    assert (message.status, message.error) == ("read", "")
    assert message.delivered_at is not None and message.read_at is not None
    assert not Outbox.objects.exists()


def test_a_receipt_for_a_message_the_sweeper_gave_up_on_marks_it_read(client, rita, settings):
    settings.DELIVERY_MAX_AGE_S = 60
    alice = make_local_person("alice")
    message = sending.send_message(sender=alice, recipient_username="rita", text="hi")
    Outbox.objects.update(queued_at=timezone.now() - timedelta(seconds=61))
    delivery.sweep_outbox()
    receipt = seal_from(rita, alice, {"ids": [str(message.envelope_id)]}, kind="read")
    post_signed(client, rita.node, protocol.encode_batch([receipt]))
    message.refresh_from_db()
    assert (message.status, message.error) == ("read", "")


def test_a_receipt_that_does_not_decrypt_is_sealed_again_and_applied(rita):
    """The author's keys changed after the reader's node sealed the receipt: the refusal
    (decrypt_failed) makes the reader's node seal it again, and the next try applies it."""
    alice, bob = make_local_person("alice"), make_local_person("bob")
    sent = sending.send_message(sender=alice, recipient_username="bob", text="read me")
    delivery.deliver_pending(node="hq")
    assert sending.mark_conversation_read(viewer=bob, peer_username="alice") == 1
    account_services.rotate_keys(user=alice)  # the receipt is sealed to alice's old key

    delivery.deliver_pending(node="hq")
    sent.refresh_from_db()
    assert sent.status == "delivered"
    row = Outbox.objects.get(kind="read")
    assert (row.last_error, row.failed_at, row.attempts) == ("decrypt_failed", None, 1)
    assert row.next_attempt_at > timezone.now()  # with backoff, like any retry

    Outbox.objects.update(next_attempt_at=timezone.now())
    delivery.deliver_pending(node="hq")
    sent.refresh_from_db()
    assert sent.status == "read"
    assert not Outbox.objects.exists()


def test_a_receipt_refused_as_undecryptable_is_sealed_for_the_authors_new_key(rita):

    alice = make_local_person("alice")
    message = stored_message(alice, "rita", direction="in", text="from rita")
    sending.mark_conversation_read(viewer=alice, peer_username="rita")
    receipt = Outbox.objects.get(kind="read")
    rotate_remote_box_key(rita)

    node_key = bytes(rita.node.key.verify_key)
    delivery._apply_answer("branch", [receipt], node_key, [], [refusal(receipt, "decrypt_failed")])

    row = Outbox.objects.get(kind="read")
    assert (row.envelope_id, row.failed_at, row.last_error) == (
        receipt.envelope_id,
        None,
        "decrypt_failed",
    )
    assert opened_by(rita, row, alice) == {"ids": [str(message.envelope_id)]}


def test_a_receipt_from_before_ids_were_kept_is_dropped_when_undecryptable(rita):

    alice = make_local_person("alice")
    stored_message(alice, "rita", direction="in", text="from rita")
    sending.mark_conversation_read(viewer=alice, peer_username="rita")
    Outbox.objects.update(read_ids=[])
    receipt = Outbox.objects.get(kind="read")

    node_key = bytes(rita.node.key.verify_key)
    delivery._apply_answer("branch", [receipt], node_key, [], [refusal(receipt, "decrypt_failed")])

    assert not Outbox.objects.exists()


def test_a_waiting_receipt_is_sealed_again_when_its_readers_keys_change(rita):
    alice = make_local_person("alice")
    message = stored_message(alice, "rita", direction="in", text="from rita")
    sending.mark_conversation_read(viewer=alice, peer_username="rita")
    before = Outbox.objects.get(kind="read")

    assert sending.rotate_person_keys(user=alice)[1] == 0  # no waiting message

    after = Outbox.objects.get(kind="read")
    alice.refresh_from_db()
    keys = alice.keys
    assert (after.envelope_id, after.destination) == (before.envelope_id, "branch")
    protocol.verify_envelope(bytes(keys.sign_public), bytes(after.raw), bytes(after.signature))
    envelope = protocol.parse_envelope(bytes(after.raw))
    payload = protocol.open_envelope(
        envelope, recipient_box_key=rita.box, sender_box_key=bytes(keys.box_public)
    )
    assert payload == {"ids": [str(message.envelope_id)]}
