"""Sending, same-node delivery, read receipts, backoff, the sweeper and retries."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from messaging import delivery, errors, outbox, queries, sending
from messaging.models import DestinationState, Message, Outbox
from peers import protocol
from tests.helpers.messaging import (
    join_local_node,
    make_local_person,
    make_remote_node,
    make_remote_person,
    opened_by,
    refusal,
    rotate_remote_box_key,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def hq():
    return join_local_node("hq")


@pytest.fixture
def alice(hq):
    return make_local_person("alice")


@pytest.fixture
def bob(hq):
    return make_local_person("bob")


@pytest.fixture
def rita(hq):
    return make_remote_person(make_remote_node("branch"), "rita")


def incoming(user) -> list[Message]:
    return list(Message.objects.filter(owner=user, direction="in").order_by("created_ms", "id"))


# --- sending --------------------------------------------------------------------------------
def test_it_queues_a_sealed_envelope_for_the_recipients_node(alice, rita):
    message = sending.send_message(sender=alice, recipient_username="rita", text="Hi Rita")
    assert (message.status, message.direction, message.peer_username) == ("queued", "out", "rita")
    row = Outbox.objects.get()
    assert (row.destination, row.message_id, row.kind) == ("branch", message.id, "message")
    protocol.verify_envelope(bytes(alice.keys.sign_public), bytes(row.raw), bytes(row.signature))
    envelope = protocol.parse_envelope(bytes(row.raw))
    assert (envelope.sender, envelope.sender_node, envelope.recipient_node) == (
        "alice",
        "hq",
        "branch",
    )
    payload = protocol.open_envelope(
        envelope, recipient_box_key=rita.box, sender_box_key=bytes(alice.keys.box_public)
    )
    assert payload == {"text": "Hi Rita"}


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_an_empty_message_is_refused(alice, rita, text):
    with pytest.raises(errors.EmptyMessage):
        sending.send_message(sender=alice, recipient_username="rita", text=text)
    assert not Message.objects.exists() and not Outbox.objects.exists()


def test_a_message_over_the_limit_is_refused(alice, rita, settings):
    settings.MESSAGE_MAX_CHARS = 20
    sending.send_message(sender=alice, recipient_username="rita", text="x" * 20)
    with pytest.raises(errors.MessageTooLong):
        sending.send_message(sender=alice, recipient_username="rita", text="x" * 21)
    assert Message.objects.count() == 1 and Outbox.objects.count() == 1


def test_a_message_to_nobody_is_refused(alice):
    with pytest.raises(errors.UnknownRecipient):
        sending.send_message(sender=alice, recipient_username="ghost", text="hello")
    assert not Message.objects.exists()


def test_a_message_to_oneself_is_refused(alice):
    with pytest.raises(errors.CannotMessageSelf):
        sending.send_message(sender=alice, recipient_username="alice", text="hello")
    assert not Message.objects.exists()


def test_text_is_kept_byte_exact_without_normalisation(alice, rita):
    text = "  e\u0301 vs \u00e9, \U0001f3f3\ufe0f\u200d\U0001f308, \u202eRTL\u202c  "
    message = sending.send_message(sender=alice, recipient_username="rita", text=text)
    message.refresh_from_db()
    assert message.text.encode("utf-8") == text.encode("utf-8")


# --- same-node delivery ---------------------------------------------------------------------
def test_a_message_between_two_people_of_this_node_is_delivered_intact(alice, bob):
    text = "👩\u200d💻 ready? \u05db\u05df \u0627\u0644\u0622\u0646 a\u0300\u0301"
    sent = sending.send_message(sender=alice, recipient_username="bob", text=text)
    result = delivery.deliver_pending(node="hq")
    assert result.delivered == 1
    sent.refresh_from_db()
    assert sent.status == "delivered" and sent.delivered_at is not None
    [received] = incoming(bob)
    assert received.text.encode("utf-8") == text.encode("utf-8")
    assert (received.envelope_id, received.peer_username) == (sent.envelope_id, "alice")
    assert not Outbox.objects.exists()


def test_delivering_again_stores_nothing_twice(alice, bob):
    sending.send_message(sender=alice, recipient_username="bob", text="once")
    row = Outbox.objects.get()
    delivery.deliver_pending(node="hq")
    row.pk = None  # the same envelope bytes, as if the acknowledgement had been lost
    row.save()
    delivery.deliver_pending(node="hq")
    assert len(incoming(bob)) == 1
    assert not Outbox.objects.exists()


def test_opening_the_conversation_sends_a_read_receipt_back(alice, bob):
    sent = sending.send_message(sender=alice, recipient_username="bob", text="read me")
    delivery.deliver_pending(node="hq")
    assert sending.mark_conversation_read(viewer=bob, peer_username="alice") == 1
    assert Outbox.objects.get().kind == "read"
    delivery.deliver_pending(node="hq")
    sent.refresh_from_db()
    assert sent.status == "read" and sent.read_at is not None
    assert incoming(bob)[0].read_at is not None
    assert sending.mark_conversation_read(viewer=bob, peer_username="alice") == 0


def test_a_conversation_lists_by_sender_time_newest_last(alice, bob):
    for n in range(5):
        sending.send_message(sender=alice, recipient_username="bob", text=f"m{n}")
    delivery.deliver_pending(node="hq")
    page = queries.conversation_page(owner=bob, peer_username="alice", size=3)
    assert [m.text for m in page.messages] == ["m2", "m3", "m4"]
    older = queries.conversation_page(
        owner=bob, peer_username="alice", size=3, before_id=page.older_cursor
    )
    assert [m.text for m in older.messages] == ["m0", "m1"]
    assert older.older_cursor is None


# --- a peer that cannot be reached ----------------------------------------------------------
def test_an_unreachable_node_backs_off_and_keeps_the_message_queued(alice, rita):
    message = sending.send_message(sender=alice, recipient_username="rita", text="hello")
    result = delivery.deliver_pending(node="branch")
    assert result.delivered == 0 and result.retry_in_s is not None
    state = DestinationState.objects.get(node="branch")
    assert state.consecutive_failures == 1 and state.next_attempt_at > timezone.now()
    message.refresh_from_db()
    assert message.status == "queued"
    assert Outbox.objects.get().attempts == 1


def test_backoff_grows_and_is_capped(settings):
    settings.DELIVERY_BACKOFF_BASE_S = 1.0
    settings.DELIVERY_BACKOFF_MAX_S = 60.0
    assert 0.5 <= outbox.backoff_delay_s(1) <= 1.0
    assert 4.0 <= outbox.backoff_delay_s(4) <= 8.0
    assert 30.0 <= outbox.backoff_delay_s(50) <= 60.0


def test_a_node_in_backoff_is_not_tried_until_it_is_online_again(alice, rita):
    sending.send_message(sender=alice, recipient_username="rita", text="hello")
    delivery.deliver_pending(node="branch")
    again = delivery.deliver_pending(node="branch")
    assert again.batches == 0 and again.retry_in_s > 0
    assert Outbox.objects.get().attempts == 1
    delivery.peer_came_online("branch")
    state = DestinationState.objects.get(node="branch")
    assert (state.consecutive_failures, state.next_attempt_at) == (0, None)


def test_the_sweeper_fails_messages_past_the_maximum_age(alice, rita, settings):
    settings.DELIVERY_MAX_AGE_S = 60
    message = sending.send_message(sender=alice, recipient_username="rita", text="late")
    Outbox.objects.update(queued_at=timezone.now() - timedelta(seconds=61))
    delivery.sweep_outbox()
    message.refresh_from_db()
    assert (message.status, message.error) == ("failed", "expired")
    assert Outbox.objects.get().failed_at is not None
    assert queries.delivery_health()["messages_failed"] == 1


def test_retry_puts_a_failed_message_back_in_the_queue(alice, rita, settings):
    settings.DELIVERY_MAX_AGE_S = 60
    message = sending.send_message(sender=alice, recipient_username="rita", text="again")
    Outbox.objects.update(queued_at=timezone.now() - timedelta(seconds=61))
    delivery.sweep_outbox()
    sending.retry_message(owner=alice, message_id=message.id)
    message.refresh_from_db()
    assert message.status == "queued"
    row = Outbox.objects.get()
    assert row.failed_at is None and row.attempts == 0
    assert delivery.sweep_outbox() == ["branch"]


def test_only_a_failed_message_can_be_retried(alice, rita):
    message = sending.send_message(sender=alice, recipient_username="rita", text="fine")
    with pytest.raises(errors.NotRetryable):
        sending.retry_message(owner=alice, message_id=message.id)


def test_someone_elses_message_cannot_be_retried(alice, bob, rita, settings):
    settings.DELIVERY_MAX_AGE_S = 60
    message = sending.send_message(sender=alice, recipient_username="rita", text="mine")
    Outbox.objects.update(queued_at=timezone.now() - timedelta(seconds=61))
    delivery.sweep_outbox()
    with pytest.raises(errors.NotRetryable):
        sending.retry_message(owner=bob, message_id=message.id)


def test_the_sweeper_lists_nodes_with_due_envelopes_only(alice, bob, rita):
    sending.send_message(sender=alice, recipient_username="rita", text="to branch")
    sending.send_message(sender=alice, recipient_username="bob", text="to hq")
    assert delivery.sweep_outbox() == ["branch", "hq"]
    delivery.deliver_pending(node="branch")  # fails, backs off
    assert delivery.sweep_outbox() == ["hq"]


def test_health_reports_the_queue(alice, rita):
    sending.send_message(sender=alice, recipient_username="rita", text="queued")
    health = queries.delivery_health()
    assert health["outbox_queued"] == 1
    assert health["outbox_oldest_age_s"] >= 0
    assert health["messages_failed"] == 0


def test_an_acknowledgement_that_arrives_after_the_message_expired_marks_it_delivered(
    alice, rita, settings
):
    message = sending.send_message(sender=alice, recipient_username="rita", text="late ack")
    row = Outbox.objects.get()
    # The sweeper expires the message while its batch is still in flight.
    settings.DELIVERY_MAX_AGE_S = 0
    Outbox.objects.update(queued_at=timezone.now() - timedelta(seconds=5))
    delivery.sweep_outbox()
    message.refresh_from_db()
    assert message.status == "failed"

    ack = protocol.sign_ack(rita.node.key, str(row.envelope_id), bytes(row.raw))
    delivery._apply_answer("branch", [row], bytes(rita.node.key.verify_key), [ack], [])

    message.refresh_from_db()
    assert (message.status, message.error) == ("delivered", "")
    assert not Outbox.objects.exists()


# --- the recipient replaced their keys ------------------------------------------------------
def test_a_message_refused_as_undecryptable_is_sealed_again_for_the_new_key(alice, rita):
    message = sending.send_message(sender=alice, recipient_username="rita", text="for old key")
    sent = Outbox.objects.get()
    rotate_remote_box_key(rita)

    node_key = bytes(rita.node.key.verify_key)
    delivery._apply_answer("branch", [sent], node_key, [], [refusal(sent, "decrypt_failed")])

    message.refresh_from_db()
    assert (message.status, message.error) == ("queued", "")
    row = Outbox.objects.get()
    assert (row.envelope_id, row.failed_at, row.attempts) == (sent.envelope_id, None, 1)
    assert row.last_error == "decrypt_failed"
    assert opened_by(rita, row, alice) == {"text": "for old key"}
    envelope = protocol.parse_envelope(bytes(row.raw))
    assert envelope.created_ms == message.created_ms
    protocol.verify_envelope(bytes(alice.keys.sign_public), bytes(row.raw), bytes(row.signature))


def test_retry_resends_the_same_bytes_so_a_stored_copy_is_acknowledged(alice, rita, settings):
    """The recipient's node may have stored it and only the acknowledgement was lost:
    new bytes under the same id would be refused as id_conflict."""
    settings.DELIVERY_MAX_AGE_S = 60
    message = sending.send_message(sender=alice, recipient_username="rita", text="retry me")
    sent = bytes(Outbox.objects.get().raw)
    Outbox.objects.update(queued_at=timezone.now() - timedelta(seconds=61))
    delivery.sweep_outbox()

    sending.retry_message(owner=alice, message_id=message.id)

    row = Outbox.objects.get()
    assert bytes(row.raw) == sent
    ack = protocol.sign_ack(rita.node.key, str(row.envelope_id), sent)
    delivery._apply_answer("branch", [row], bytes(rita.node.key.verify_key), [ack], [])
    message.refresh_from_db()
    assert message.status == "delivered"


def test_a_retried_message_for_a_replaced_key_is_resealed_when_refused(alice, rita, settings):
    settings.DELIVERY_MAX_AGE_S = 60
    message = sending.send_message(sender=alice, recipient_username="rita", text="retry me")
    Outbox.objects.update(queued_at=timezone.now() - timedelta(seconds=61))
    delivery.sweep_outbox()
    rotate_remote_box_key(rita)
    sending.retry_message(owner=alice, message_id=message.id)
    row = Outbox.objects.get()

    node_key = bytes(rita.node.key.verify_key)
    delivery._apply_answer("branch", [row], node_key, [], [refusal(row, "decrypt_failed")])

    row = Outbox.objects.get()
    assert row.failed_at is None
    assert opened_by(rita, row, alice) == {"text": "retry me"}
