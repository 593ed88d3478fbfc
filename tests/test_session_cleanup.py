"""Expired browser sessions and their records do not pile up."""

from datetime import timedelta

import pytest
from django.contrib.sessions.models import Session
from django.test import Client
from django.utils import timezone

from accounts.models import UserSession
from accounts.tasks import clear_expired_sessions
from tests.helpers.accounts import logged_in
from tests.helpers.factories import make_person

pytestmark = pytest.mark.django_db


def test_expired_sessions_and_their_records_are_cleared_live_ones_kept():
    _, alice_secret = make_person("alice")
    _, bob_secret = make_person("bob")
    alice = logged_in(Client(), "alice", alice_secret)
    logged_in(Client(), "bob", bob_secret)
    bobs = UserSession.objects.get(user__username="bob").session_key
    Session.objects.filter(session_key=bobs).update(
        expire_date=timezone.now() - timedelta(seconds=1)
    )

    assert clear_expired_sessions() == 1

    assert list(UserSession.objects.values_list("user__username", flat=True)) == ["alice"]
    assert not Session.objects.filter(session_key=bobs).exists()
    assert alice.get("/profile/").status_code == 200  # the live session still works
