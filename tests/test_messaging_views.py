"""The conversation page, its JSON poll and the Retry button, as a logged-in person sees them."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from messaging import delivery
from messaging.models import Message, Outbox
from tests.helpers.factories import DEFAULT_PASSWORD, code_at_step, make_person
from tests.helpers.messaging import (
    join_local_node,
    make_local_person,
    make_remote_node,
    make_remote_person,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice():
    join_local_node("hq")
    user, secret = make_person("alice")
    make_remote_person(make_remote_node("branch"), "rita")
    make_local_person("bob")
    client = Client()
    client.post("/login/", {"username": "alice", "password": DEFAULT_PASSWORD})
    client.post("/login/code/", {"code": code_at_step(secret, int(time.time() // 30))})
    client.user = user
    return client


def test_sending_from_the_page_queues_the_message_and_shows_it(alice):
    response = alice.post("/chat/rita/", {"text": "Hello <b>Rita</b> 👋"})
    assert response.status_code == 302
    page = alice.get("/chat/rita/").content.decode()
    assert "Hello &lt;b&gt;Rita&lt;/b&gt; 👋" in page
    assert "queued" in page
    assert Outbox.objects.get().destination == "branch"


def test_an_empty_message_is_refused_with_a_clear_error(alice):
    response = alice.post("/chat/rita/", {"text": "   "})
    assert response.status_code == 400
    assert "Write something before sending." in response.content.decode()
    assert not Message.objects.exists()


def test_a_too_long_message_is_refused_and_the_draft_kept(alice, settings):
    settings.MESSAGE_MAX_CHARS = 10
    response = alice.post("/chat/rita/", {"text": "x" * 11})
    page = response.content.decode()
    assert response.status_code == 400
    assert "at most 10 characters" in page and "x" * 11 in page
    assert not Message.objects.exists()


def test_an_unknown_person_is_a_404_page(alice):
    assert alice.get("/chat/nobody/").status_code == 404
    assert alice.post("/chat/nobody/", {"text": "hi"}).status_code == 404
    assert not Message.objects.exists()


def test_the_poll_returns_new_messages_and_statuses(alice):
    alice.post("/chat/bob/", {"text": "one"})
    delivery.deliver_pending(node="hq")
    answer = alice.get("/chat/bob/messages.json?after=0").json()
    [message] = answer["messages"]
    assert (message["text"], message["direction"]) == ("one", "out")
    assert answer["statuses"] == {str(message["id"]): "delivered"}
    assert alice.get(f"/chat/bob/messages.json?after={message['id']}").json()["messages"] == []


@pytest.mark.parametrize("after", ["x", "-1", "1e3", "9" * 30])
def test_a_bad_poll_cursor_is_a_400(alice, after):
    response = alice.get(f"/chat/bob/messages.json?after={after}")
    assert (response.status_code, response.json()["error"]["code"]) == (400, "invalid_field")


def test_a_failed_message_shows_a_retry_button_that_requeues_it(alice, settings):
    settings.DELIVERY_MAX_AGE_S = 60
    alice.post("/chat/rita/", {"text": "late"})
    Outbox.objects.update(queued_at=timezone.now() - timedelta(seconds=61))
    delivery.sweep_outbox()
    message = Message.objects.get()
    page = alice.get("/chat/rita/").content.decode()
    assert f"/chat/rita/retry/{message.id}/" in page and "failed" in page
    assert alice.post(f"/chat/rita/retry/{message.id}/").status_code == 302
    message.refresh_from_db()
    assert message.status == "queued"


def test_the_page_is_not_reachable_without_login():
    join_local_node("hq")
    assert Client().get("/chat/rita/").status_code == 302
