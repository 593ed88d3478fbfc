"""The writes of messaging tell each person's open pages what changed (messaging.live):
a message sent, arrived, delivered, read, or its file held, as an event on that person's
stream only, with the conversation and the message ids, never the text."""

from __future__ import annotations

import json

import pytest
import redis

from messaging import delivery, files, sending
from messaging.models import Message
from p2psocial import events, redis_client
from tests.helpers import samples
from tests.helpers.messaging import join_local_node, make_local_person
from tests.helpers.redis import running_redis
from tests.helpers.uploads import uploaded

pytestmark = pytest.mark.django_db(transaction=True)  # events go out on commit


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with running_redis(tmp_path_factory.mktemp("live-redis")) as url:
        yield url


@pytest.fixture
def people(settings, redis_url, tmp_path, monkeypatch):
    """alice and bob on this node, a private Redis for events, no Celery."""
    settings.REDIS_URL = redis_url
    settings.FILES_DIR = tmp_path / "files"
    redis.Redis.from_url(redis_url).flushdb()
    redis_client.get.cache_clear()
    monkeypatch.setattr("messaging.outbox.enqueue", lambda *a, **k: None)
    monkeypatch.setattr(files, "enqueue", lambda *a, **k: None)
    join_local_node("hq")
    yield make_local_person("alice"), make_local_person("bob")
    redis_client.get.cache_clear()


def events_of(user) -> list[tuple[str, dict]]:
    entries = redis_client.get().xrange(events.person_key(user.pk))
    return [events.decode(fields[b"e"]) for _, fields in entries]


def test_a_message_tells_both_people_and_nobody_else(people):
    alice, bob = people
    carol = make_local_person("carol")

    message = sending.send_message(sender=alice, recipient_username="bob", text="secret plan")
    delivery.deliver_pending(node="hq")

    received = Message.objects.get(owner=bob)
    assert events_of(bob) == [("conversation.new", {"peer": "alice", "ids": [received.id]})]
    assert events_of(alice) == [
        ("conversation.new", {"peer": "bob", "ids": [message.id]}),
        ("conversation.status", {"peer": "bob", "ids": [message.id]}),
    ]
    assert events_of(carol) == []
    everything = json.dumps([events_of(alice), events_of(bob)])
    assert "secret plan" not in everything


def test_reading_tells_the_reader_and_the_author(people):
    alice, bob = people
    message = sending.send_message(sender=alice, recipient_username="bob", text="read me")
    delivery.deliver_pending(node="hq")

    sending.mark_conversation_read(viewer=bob, peer_username="alice")
    delivery.deliver_pending(node="hq")  # the read receipt

    assert ("conversation.read", {"peer": "alice", "ids": []}) in events_of(bob)
    assert events_of(alice)[-1] == ("conversation.status", {"peer": "bob", "ids": [message.id]})
    assert Message.objects.get(id=message.id).status == "read"


def test_a_received_file_held_tells_its_owner(people):
    alice, bob = people
    upload = uploaded(samples.png(), "cat.png")
    sending.send_message(sender=alice, recipient_username="bob", text="", upload=upload)
    delivery.deliver_pending(node="hq")

    files.pull_pending(node="hq")

    received = Message.objects.get(owner=bob)
    assert events_of(bob)[-1] == ("conversation.file", {"peer": "alice", "ids": [received.id]})


def test_events_are_best_effort_when_redis_is_down(people, settings):
    alice, _ = people
    settings.REDIS_URL = "redis://127.0.0.1:9/0"
    redis_client.get.cache_clear()

    message = sending.send_message(sender=alice, recipient_username="bob", text="still sent")

    assert Message.objects.get(id=message.id).status == "queued"
