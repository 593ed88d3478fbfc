"""Enrolling an authenticator: its secret is shown to the one session that set it up.

Whoever knows only the password gets a session of their own; they must never see (or
confirm) the authenticator the person is enrolling in another session.
"""

from __future__ import annotations

import base64
import re

import pyotp
import pytest
from django.test import Client
from django_otp.plugins.otp_totp.models import TOTPDevice

from tests.helpers.accounts import post_password
from tests.helpers.factories import make_person

pytestmark = pytest.mark.django_db

_SECRET = re.compile(r'<code id="totp-secret" class="secret">([A-Z2-7]+)</code>')


def password_only(username: str) -> Client:
    client = Client()
    assert post_password(client, username)["Location"] == "/setup/2fa/"
    return client


def shown_secret(client: Client) -> str:
    """The secret the enrolment page shows this client."""
    match = _SECRET.search(client.get("/setup/2fa/").content.decode())
    assert match is not None
    return match.group(1)


def test_a_second_password_only_session_is_not_shown_the_secret_being_enrolled():
    make_person("bob", totp=False)
    person, other = password_only("bob"), password_only("bob")
    secret = shown_secret(person)
    page = other.get("/setup/2fa/").content.decode()
    assert secret not in page
    assert shown_secret(other) != secret


def test_the_enrolment_page_keeps_showing_a_session_the_same_secret():
    make_person("bob", totp=False)
    person = password_only("bob")
    assert shown_secret(person) == shown_secret(person)


def test_the_person_confirms_their_own_authenticator_and_the_others_is_gone():
    user, _ = make_person("bob", totp=False)
    person, other = password_only("bob"), password_only("bob")
    secret = shown_secret(person)
    other_secret = shown_secret(other)
    response = person.post("/setup/2fa/", {"code": pyotp.TOTP(secret).now()})
    assert response["Location"] == "/setup/backup-codes/"
    confirmed = TOTPDevice.objects.get(user=user)
    assert confirmed.confirmed
    assert base64.b32encode(confirmed.bin_key).decode().rstrip("=") == secret
    # the other session's authenticator no longer exists, and its page shows nothing
    assert other.get("/setup/2fa/")["Location"] == "/login/code/"
    assert other_secret not in other.get("/login/code/").content.decode()


def test_a_code_of_the_authenticator_shown_to_another_session_does_not_confirm():
    user, _ = make_person("bob", totp=False)
    person, other = password_only("bob"), password_only("bob")
    secret = shown_secret(person)
    shown_secret(other)
    response = other.post("/setup/2fa/", {"code": pyotp.TOTP(secret).now()})
    assert response.status_code == 400
    assert not TOTPDevice.objects.filter(user=user, confirmed=True).exists()
    assert person.post("/setup/2fa/", {"code": pyotp.TOTP(secret).now()}).status_code == 302


def test_confirming_without_a_set_up_started_in_this_session_asks_to_start_again():
    make_person("bob", totp=False)
    person, other = password_only("bob"), password_only("bob")
    secret = shown_secret(person)
    response = other.post("/setup/2fa/", {"code": pyotp.TOTP(secret).now()})
    assert response.status_code == 400
    assert "Start the set-up again." in response.content.decode()
