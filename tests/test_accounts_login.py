"""Password + second factor login, enrolment, backup codes, lockout and sessions (Django client)."""

from __future__ import annotations

import pyotp
import pytest
from django.contrib.sessions.models import Session
from django.test import Client
from django_otp.plugins.otp_static.models import StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts import twofactor
from accounts.models import User
from tests.helpers.accounts import logged_in, pending_secret, post_password, step_now
from tests.helpers.factories import DEFAULT_PASSWORD, code_at_step, make_person

pytestmark = pytest.mark.django_db


def test_it_sends_a_person_with_an_authenticator_to_the_code_page():
    make_person("alice")
    client = Client()
    response = post_password(client, "alice")
    assert response.status_code == 302
    assert response["Location"] == "/login/code/"


def test_it_keeps_pages_closed_after_the_password_alone():
    make_person("alice")
    client = Client()
    post_password(client, "alice")
    response = client.get("/profile/")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/code/")


def test_it_refuses_a_wrong_password_with_a_message():
    make_person("alice")
    response = post_password(Client(), "alice", "not the password at all")
    assert response.status_code == 400
    assert "Wrong username or password." in response.content.decode()


def test_it_logs_in_with_password_and_code_and_opens_the_profile():
    _, secret = make_person("alice")
    client = logged_in(Client(), "alice", secret)
    response = client.get("/profile/")
    assert response.status_code == 200
    assert "Your profile" in response.content.decode()


def test_it_returns_to_the_page_asked_for_after_login():
    _, secret = make_person("alice")
    client = Client()
    client.post("/login/?next=/password/", {"username": "alice", "password": DEFAULT_PASSWORD})
    response = client.post("/login/code/", {"code": code_at_step(secret, step_now())})
    assert response["Location"] == "/password/"


def test_it_ignores_a_next_url_on_another_site():
    _, secret = make_person("alice")
    client = Client()
    client.post(
        "/login/", {"username": "alice", "password": DEFAULT_PASSWORD, "next": "https://evil.test/"}
    )
    response = client.post("/login/code/", {"code": code_at_step(secret, step_now())})
    assert "evil" not in response["Location"]


def test_a_wrong_code_is_refused_with_a_message():
    _, secret = make_person("alice")
    client = Client()
    post_password(client, "alice")
    right = code_at_step(secret, step_now())
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    response = client.post("/login/code/", {"code": wrong})
    assert response.status_code == 400
    assert "That code is not right" in response.content.decode()
    assert client.get("/profile/").status_code == 302


def test_a_code_cannot_be_used_twice():
    _, secret = make_person("alice")
    step = step_now()
    logged_in(Client(), "alice", secret, step)
    client = Client()
    post_password(client, "alice")
    response = client.post("/login/code/", {"code": code_at_step(secret, step)})
    assert response.status_code == 400
    assert "already used" in response.content.decode()
    assert client.get("/profile/").status_code == 302


def test_an_older_code_than_the_last_used_one_is_refused():
    _, secret = make_person("alice")
    step = step_now()
    logged_in(Client(), "alice", secret, step + 1)
    client = Client()
    post_password(client, "alice")
    response = client.post("/login/code/", {"code": code_at_step(secret, step)})
    assert response.status_code == 400
    assert client.get("/profile/").status_code == 302


def test_repeated_wrong_codes_are_throttled_with_a_message():
    _, secret = make_person("alice")
    client = Client()
    post_password(client, "alice")
    right = code_at_step(secret, step_now())
    client.post("/login/code/", {"code": f"{(int(right) + 1) % 1_000_000:06d}"})
    # right away, even the right code waits out the throttle delay
    response = client.post("/login/code/", {"code": code_at_step(secret, step_now())})
    assert response.status_code == 400
    assert "Too many wrong codes" in response.content.decode()
    assert client.get("/profile/").status_code == 302


def test_a_code_of_the_wrong_shape_gets_a_message():
    make_person("alice")
    client = Client()
    post_password(client, "alice")
    response = client.post("/login/code/", {"code": "12ab"})
    assert "Enter the 6-digit code" in response.content.decode()


def test_a_huge_code_is_refused_with_a_message():
    make_person("alice")
    client = Client()
    post_password(client, "alice")
    response = client.post("/login/code/", {"code": "1" * 5000})
    assert response.status_code == 400
    assert "at most 32 characters" in response.content.decode()


def test_an_empty_login_form_says_what_is_missing():
    response = Client().post("/login/", {})
    assert response.status_code == 400
    assert response.content.decode().count("This field is required.") == 2


def test_an_empty_code_form_says_what_is_missing():
    make_person("alice")
    client = Client()
    post_password(client, "alice")
    response = client.post("/login/code/", {})
    assert response.status_code == 400
    assert "This field is required." in response.content.decode()


def test_an_empty_enrolment_form_says_what_is_missing():
    make_person("alice", totp=False)
    client = Client()
    post_password(client, "alice")
    client.get("/setup/2fa/")
    response = client.post("/setup/2fa/", {})
    assert response.status_code == 400
    assert "This field is required." in response.content.decode()


def test_a_backup_code_logs_in_once():
    user, _ = make_person("alice")
    codes = twofactor.create_backup_codes(user=user)
    client = Client()
    post_password(client, "alice")
    response = client.post("/login/code/", {"code": codes[0].upper()})
    assert response.status_code == 302
    assert client.get("/profile/").status_code == 200
    again = Client()
    post_password(again, "alice")
    response = again.post("/login/code/", {"code": codes[0]})
    assert response.status_code == 400
    assert "already used" in response.content.decode()
    assert StaticToken.objects.filter(device__user=user).count() == 9


def test_a_person_without_an_authenticator_must_enrol_first():
    make_person("bob", totp=False)
    client = Client()
    response = post_password(client, "bob")
    assert response["Location"] == "/setup/2fa/"
    assert client.get("/profile/")["Location"].startswith("/setup/2fa/")
    assert client.get("/login/code/")["Location"] == "/setup/2fa/"


def test_enrolment_shows_a_qr_code_and_the_secret_and_confirms_with_a_code():
    make_person("bob", totp=False)
    client = Client()
    post_password(client, "bob")
    page = client.get("/setup/2fa/").content.decode()
    assert 'src="data:image/png;base64,' in page
    secret = pending_secret("bob")
    assert secret in page
    assert f"otpauth://totp/p2psocial:bob?secret={secret}" in page
    response = client.post("/setup/2fa/", {"code": pyotp.TOTP(secret).now()})
    assert response["Location"] == "/setup/backup-codes/"
    codes_page = client.get("/setup/backup-codes/").content.decode()
    tokens = list(
        StaticToken.objects.filter(device__user__username="bob").values_list("token", flat=True)
    )
    assert len(tokens) == 10
    assert all(t in codes_page for t in tokens)
    assert client.get("/profile/").status_code == 200


def test_backup_codes_are_shown_only_once():
    make_person("bob", totp=False)
    client = Client()
    post_password(client, "bob")
    client.get("/setup/2fa/")
    secret = pending_secret("bob")
    client.post("/setup/2fa/", {"code": pyotp.TOTP(secret).now()})
    client.get("/setup/backup-codes/")
    page = client.get("/setup/backup-codes/").content.decode()
    token = StaticToken.objects.filter(device__user__username="bob").first().token
    assert token not in page
    assert "shown once" in page


def test_a_wrong_enrolment_code_is_refused_and_nothing_is_confirmed():
    make_person("bob", totp=False)
    client = Client()
    post_password(client, "bob")
    client.get("/setup/2fa/")
    response = client.post("/setup/2fa/", {"code": "12345"})
    assert response.status_code == 400
    assert "6-digit code" in response.content.decode()
    assert not TOTPDevice.objects.filter(user__username="bob", confirmed=True).exists()


def test_wrong_passwords_lock_the_login_with_a_clear_page(settings):
    settings.AXES_FAILURE_LIMIT = 3
    make_person("alice")
    client = Client()
    for _ in range(2):
        assert post_password(client, "alice", "wrong wrong wrong").status_code == 400
    response = post_password(client, "alice", "wrong wrong wrong")
    assert response.status_code == 429
    assert "Too many failed logins" in response.content.decode()
    # now even the right password is refused
    response = post_password(client, "alice")
    assert response.status_code == 429
    assert "_auth_user_id" not in client.session


def test_logout_ends_every_session_of_the_person():
    _, secret = make_person("alice")
    step = step_now()
    first = logged_in(Client(), "alice", secret, step)
    second = logged_in(Client(), "alice", secret, step + 1)
    assert first.get("/profile/").status_code == 200
    response = second.post("/logout/")
    assert response["Location"] == "/login/"
    assert second.get("/profile/").status_code == 302
    assert first.get("/profile/").status_code == 302
    user = User.objects.get(username="alice")
    assert not [
        s for s in Session.objects.all() if s.get_decoded().get("_auth_user_id") == str(user.pk)
    ]


def test_logout_needs_a_post():
    _, secret = make_person("alice")
    client = logged_in(Client(), "alice", secret)
    page = client.get("/logout/")
    assert page.status_code == 200
    assert client.get("/profile/").status_code == 200


def test_password_change_ends_other_sessions_and_keeps_this_one():
    _, secret = make_person("alice")
    step = step_now()
    other = logged_in(Client(), "alice", secret, step)
    this = logged_in(Client(), "alice", secret, step + 1)
    response = this.post(
        "/password/",
        {
            "old_password": DEFAULT_PASSWORD,
            "new_password1": "a whole new passphrase",
            "new_password2": "a whole new passphrase",
        },
    )
    assert response.status_code == 302
    assert this.get("/profile/").status_code == 200
    assert other.get("/profile/").status_code == 302
    assert User.objects.get(username="alice").check_password("a whole new passphrase")


def test_a_weak_new_password_is_refused_with_a_message():
    _, secret = make_person("alice")
    client = logged_in(Client(), "alice", secret)
    response = client.post(
        "/password/",
        {"old_password": DEFAULT_PASSWORD, "new_password1": "123", "new_password2": "123"},
    )
    assert response.status_code == 400
    assert "too short" in response.content.decode()
    assert User.objects.get(username="alice").check_password(DEFAULT_PASSWORD)


def test_activity_is_written_at_most_once_per_interval():
    _, secret = make_person("alice")
    client = logged_in(Client(), "alice", secret)
    client.get("/profile/")
    first = User.objects.get(username="alice").last_activity
    assert first is not None
    client.get("/profile/")
    assert User.objects.get(username="alice").last_activity == first


def test_anonymous_json_requests_get_a_json_401():
    response = Client().get("/chat/alice/messages.json")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "login_required"


def test_a_form_without_csrf_token_gets_a_human_403():
    make_person("alice")
    client = Client(enforce_csrf_checks=True)
    response = post_password(client, "alice")
    assert response.status_code == 403
    assert "security token" in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_a_huge_login_form_is_refused_with_a_message():
    make_person("alice")
    response = post_password(Client(), "alice" * 100, "x" * 5000)
    assert response.status_code == 400
    body = response.content.decode()
    assert "at most 150 characters" in body
    assert "at most 1024 characters" in body


def test_a_body_over_the_upload_limit_gets_a_400_page():
    response = Client().post("/login/", {"username": "a", "password": "x" * (3 * 1024 * 1024)})
    assert response.status_code == 400
    assert "too large" in response.content.decode()
