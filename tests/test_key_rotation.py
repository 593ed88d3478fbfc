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
