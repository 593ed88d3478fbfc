"""The admin: staff with a verified second factor only; resetting a person's second factor."""

from __future__ import annotations

import pytest
from django.test import Client
from django_otp.plugins.otp_static.models import StaticDevice
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts import twofactor
from tests.helpers.accounts import logged_in, step_now
from tests.helpers.factories import DEFAULT_PASSWORD, code_at_step, make_person

pytestmark = pytest.mark.django_db


def _admin_login(client: Client, username: str, code: str = ""):
    return client.post(
        "/admin/login/?next=/admin/",
        {"username": username, "password": DEFAULT_PASSWORD, "otp_token": code, "next": "/admin/"},
    )


def test_the_admin_refuses_a_staff_member_without_a_second_factor():
    make_person("root", staff=True, totp=False)
    client = Client()
    response = _admin_login(client, "root")
    assert response.status_code == 200
    assert "no second factor set up" in response.content.decode()
    assert client.get("/admin/").status_code == 302


def test_the_admin_refuses_a_staff_member_with_a_wrong_code():
    _, secret = make_person("root", staff=True)
    client = Client()
    right = code_at_step(secret, step_now())
    response = _admin_login(client, "root", f"{(int(right) + 1) % 1_000_000:06d}")
    assert "Invalid token" in response.content.decode()
    assert client.get("/admin/").status_code == 302


def test_the_admin_login_takes_password_and_code():
    _, secret = make_person("root", staff=True)
    client = Client()
    response = _admin_login(client, "root", code_at_step(secret, step_now()))
    assert response.status_code == 302
    page = client.get("/admin/")
    assert page.status_code == 200
    assert "p2psocial administration" in page.content.decode()


def test_the_admin_refuses_people_who_are_not_staff():
    _, secret = make_person("alice")
    client = logged_in(Client(), "alice", secret, step_now())
    response = client.get("/admin/")
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_a_staff_member_logged_in_with_both_factors_can_use_the_admin():
    _, secret = make_person("root", staff=True)
    client = logged_in(Client(), "root", secret, step_now())
    assert client.get("/admin/accounts/user/").status_code == 200


def test_the_person_page_shows_key_fingerprints_but_no_private_key():
    _, secret = make_person("root", staff=True)
    alice, _ = make_person("alice")
    client = logged_in(Client(), "root", secret, step_now())
    page = client.get(f"/admin/accounts/user/{alice.pk}/change/").content.decode()
    assert "Signing key (ed25519) fingerprint" in page
    assert "sign_private_encrypted" not in page


def test_resetting_the_second_factor_forces_enrolment_at_next_login():
    _, admin_secret = make_person("root", staff=True)
    alice, alice_secret = make_person("alice")
    twofactor.create_backup_codes(user=alice)
    step = step_now()
    alice_client = logged_in(Client(), "alice", alice_secret, step)
    admin = logged_in(Client(), "root", admin_secret, step)
    response = admin.post(
        "/admin/accounts/user/",
        {"action": "reset_second_factor", "_selected_action": [alice.pk]},
    )
    assert response.status_code == 302
    assert not TOTPDevice.objects.filter(user=alice).exists()
    assert not StaticDevice.objects.filter(user=alice).exists()
    assert alice_client.get("/profile/").status_code == 302  # her sessions were ended
    client = Client()
    response = client.post("/login/", {"username": "alice", "password": DEFAULT_PASSWORD})
    assert response["Location"] == "/setup/2fa/"


def test_the_admin_login_refuses_a_code_that_was_already_used():
    _, secret = make_person("root", staff=True)
    code = code_at_step(secret, step_now())
    assert _admin_login(Client(), "root", code).status_code == 302

    again = Client()
    response = _admin_login(again, "root", code)

    assert response.status_code == 200
    assert "Invalid token" in response.content.decode()
    assert again.get("/admin/").status_code == 302
