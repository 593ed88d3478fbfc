"""An expired user record in the directory cache: the person is still listed, but nothing
is sent to them or accepted from them until the login server vouches for them again."""

from __future__ import annotations

import time

import pytest
from django.test import Client

from messaging import errors, sending
from messaging.models import Message, Outbox, ReceivedEnvelope
from peers import protocol
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

pytestmark = pytest.mark.django_db

AN_HOUR_AGO = int(time.time()) - 3600


@pytest.fixture
def branch():
    join_local_node("hq")
    return make_remote_node("branch")


def person_logged_in(username: str) -> Client:
    _, secret = make_person(username)
    return logged_in(Client(), username, secret)


def test_sending_to_a_person_whose_record_expired_is_refused_with_a_typed_error(branch):
    alice = make_local_person("alice")
    make_remote_person(branch, "rita", expires=AN_HOUR_AGO)
    with pytest.raises(errors.RecipientRecordExpired) as refused:
        sending.send_message(sender=alice, recipient_username="rita", text="hello")
    assert refused.value.code == "record_expired"
    assert not Outbox.objects.exists()


def test_the_conversation_page_says_why_a_message_cannot_be_sent(branch):
    make_remote_person(branch, "rita", expires=AN_HOUR_AGO)
    response = person_logged_in("alice").post("/chat/rita/", {"text": "hello"})
    assert response.status_code == 409
    assert "entry in the network directory has expired" in response.content.decode()
    assert not Message.objects.exists()


def test_a_person_whose_record_expired_is_still_on_the_users_page(branch):
    make_remote_person(branch, "rita", expires=AN_HOUR_AGO)
    assert 'data-username="rita"' in person_logged_in("alice").get("/users/").content.decode()


def test_a_person_whose_record_is_current_can_be_sent_to(branch):
    alice = make_local_person("alice")
    make_remote_person(branch, "rita")
    sending.send_message(sender=alice, recipient_username="rita", text="hello")
    assert Outbox.objects.get().destination == "branch"


def test_an_envelope_from_a_sender_whose_record_expired_is_refused(client, branch):
    bob = make_local_person("bob")
    rita = make_remote_person(branch, "rita", expires=AN_HOUR_AGO)
    response = post_signed(client, branch, protocol.encode_batch([seal_from(rita, bob)]))
    assert response.status_code == 200
    assert [e["code"] for e in response.json()["errors"]] == ["record_expired"]
    assert not ReceivedEnvelope.objects.exists()


def test_reading_a_message_from_a_person_whose_record_expired_queues_no_receipt(branch):
    alice = make_local_person("alice")
    make_remote_person(branch, "rita", expires=AN_HOUR_AGO)
    Message.objects.create(
        envelope_id=protocol.new_envelope_id(),
        kind="message",
        owner=alice,
        peer_username="rita",
        sender_username="rita",
        recipient_username="alice",
        direction="in",
        text="hi",
        created_ms=1,
        status="delivered",
    )
    assert sending.mark_conversation_read(viewer=alice, peer_username="rita") == 1
    assert not Outbox.objects.exists()
