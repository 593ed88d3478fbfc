"""Local presence counts only people who passed both factors: a password alone (second
factor not yet typed) never makes anyone online on the network."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import User
from accounts.signals import second_factor_verified
from peers import presence
from tests.helpers.accounts import logged_in, post_password, step_now
from tests.helpers.factories import DEFAULT_PASSWORD, code_at_step, make_person

pytestmark = pytest.mark.django_db


def status_of(username: str) -> str:
    user = User.objects.get(username=username)
    return presence.local_presence([user])[user.pk].status


def test_a_person_who_only_typed_the_password_is_offline():
    make_person("alice")
    response = post_password(Client(), "alice")
    assert response["Location"] == "/login/code/"
    assert status_of("alice") == "offline"


def test_a_person_who_has_not_yet_enrolled_an_authenticator_is_offline():
    make_person("alice", totp=False)
    response = post_password(Client(), "alice")
    assert response["Location"] == "/setup/2fa/"
    assert status_of("alice") == "offline"


def test_a_person_who_typed_the_code_is_online():
    _, secret = make_person("alice")
    logged_in(Client(), "alice", secret)
    assert status_of("alice") == "online"


def test_the_report_started_by_the_login_already_sees_the_person_online():
    _, secret = make_person("alice")
    seen: list[str] = []

    def on_verified(sender, request, user, **kwargs):
        seen.append(status_of(user.username))

    second_factor_verified.connect(on_verified, dispatch_uid="test.presence.at_login")
    try:
        logged_in(Client(), "alice", secret)
    finally:
        second_factor_verified.disconnect(dispatch_uid="test.presence.at_login")
    assert seen == ["online"]


def test_a_password_step_after_a_day_away_does_not_bring_the_person_back_online():
    _, secret = make_person("alice")
    logged_in(Client(), "alice", secret)
    a_day_ago = timezone.now() - timedelta(days=1)
    User.objects.filter(username="alice").update(last_activity=a_day_ago)
    # Someone with the password (not the code) logs in from elsewhere: last_login is now.
    post_password(Client(), "alice")
    assert User.objects.get(username="alice").last_login > a_day_ago
    assert status_of("alice") == "offline"


def test_an_admin_login_with_password_and_code_counts_as_online():
    _, secret = make_person("root", staff=True)
    client = Client()
    response = client.post(
        "/admin/login/?next=/admin/",
        {
            "username": "root",
            "password": DEFAULT_PASSWORD,
            "otp_token": code_at_step(secret, step_now()),
            "next": "/admin/",
        },
    )
    assert response.status_code == 302
    assert client.get("/admin/").status_code == 200
    assert status_of("root") == "online"


def test_a_wrong_code_leaves_the_person_offline():
    _, secret = make_person("alice")
    client = Client()
    post_password(client, "alice")
    right = code_at_step(secret, step_now())
    response = client.post("/login/code/", {"code": f"{(int(right) + 1) % 1_000_000:06d}"})
    assert response.status_code == 400
    assert status_of("alice") == "offline"
