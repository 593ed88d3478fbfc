"""An office admin rotates a person's keys: new public keys, old private keys gone."""

import pytest
from django.core.management import CommandError, call_command

from accounts.keys import box_key_for, signing_key_for
from accounts.models import UserKeys
from tests.helpers.factories import make_person

pytestmark = pytest.mark.django_db


def test_it_gives_the_person_new_keys_that_work_and_drops_the_old_ones(capsys):
    alice, _ = make_person("alice")
    old = UserKeys.objects.get(user=alice)

    call_command("rotate_user_keys", "alice")

    new = UserKeys.objects.get(user=alice)
    assert bytes(new.sign_public) != bytes(old.sign_public)
    assert bytes(new.box_public) != bytes(old.box_public)
    assert bytes(signing_key_for(new).verify_key) == bytes(new.sign_public)
    assert bytes(box_key_for(new).public_key) == bytes(new.box_public)
    assert not UserKeys.objects.filter(pk=old.pk).exists()
    out = capsys.readouterr().out
    assert "old signing key fingerprint" in out and "new signing key fingerprint" in out


def test_it_refuses_an_unknown_person():
    with pytest.raises(CommandError, match="nobody called 'ghost'"):
        call_command("rotate_user_keys", "ghost")


def test_waiting_messages_are_sealed_again_with_the_new_keys():
    from messaging import sending
    from messaging.models import Outbox
    from peers import protocol
    from tests.helpers.messaging import (
        join_local_node,
        make_local_person,
        make_remote_node,
        make_remote_person,
    )

    join_local_node("hq")
    alice = make_local_person("alice")
    rita = make_remote_person(make_remote_node("branch"), "rita")
    message = sending.send_message(sender=alice, recipient_username="rita", text="still queued")
    before = Outbox.objects.get()

    call_command("rotate_user_keys", "alice")

    after = Outbox.objects.get()
    new_keys = UserKeys.objects.get(user=alice)
    assert after.envelope_id == before.envelope_id
    assert bytes(after.raw) != bytes(before.raw)
    protocol.verify_envelope(bytes(new_keys.sign_public), bytes(after.raw), bytes(after.signature))
    envelope = protocol.parse_envelope(bytes(after.raw))
    assert envelope.created_ms == message.created_ms
    payload = protocol.open_envelope(
        envelope, recipient_box_key=rita.box, sender_box_key=bytes(new_keys.box_public)
    )
    assert payload == {"text": "still queued"}
