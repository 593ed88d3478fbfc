"""Both factors again before new backup codes; a short life for sessions with only the password."""

from __future__ import annotations

from datetime import datetime, timedelta

import pyotp
import pytest
from django.contrib.sessions.models import Session
from django.db.models import F
from django.test import Client

from accounts import twofactor
from accounts.models import User
from tests.helpers.accounts import logged_in, pending_secret, post_password, step_now
from tests.helpers.factories import DEFAULT_PASSWORD, code_at_step, make_person

pytestmark = pytest.mark.django_db


def _with_backup_codes(username: str = "alice") -> tuple[Client, User, str, list[str], int]:
    """A verified session of a person with backup codes; returns the step of the code used."""
    user, secret = make_person(username)
    codes = twofactor.create_backup_codes(user=user)
    step = step_now()
    client = logged_in(Client(), username, secret, step)
    return client, user, secret, codes, step


def _regenerate(client: Client, password: str, code: str):
    return client.post("/setup/backup-codes/", {"password": password, "code": code})


def _age_session(client: Client, seconds: int) -> None:
    """As if `seconds` passed since the last request: the session's stored end comes closer."""
    session = client.session
    fixed_end = session.get("_session_expiry")
    if isinstance(fixed_end, str):  # an end set with a datetime stays put when a request saves
        session.set_expiry(datetime.fromisoformat(fixed_end) - timedelta(seconds=seconds))
        session.save()
    else:
        Session.objects.filter(session_key=session.session_key).update(
            expire_date=F("expire_date") - timedelta(seconds=seconds)
        )


# --- new backup codes need the password and an authenticator code -------------------


def test_the_backup_codes_page_asks_for_the_password_and_an_authenticator_code():
    client, *_ = _with_backup_codes()
    page = client.get("/setup/backup-codes/").content.decode()
    assert 'name="password"' in page
    assert 'type="password"' in page
    assert 'name="code"' in page
    assert "not a backup code" in page


def test_it_makes_new_codes_with_the_password_and_a_current_code():
    client, user, secret, old_codes, step = _with_backup_codes()
    response = _regenerate(client, DEFAULT_PASSWORD, code_at_step(secret, step + 1))
    assert response.status_code == 302
    assert response["Location"] == "/setup/backup-codes/"
    page = client.get("/setup/backup-codes/").content.decode()
    assert "New backup codes made" in page
    new_codes = twofactor.backup_codes(user)
    assert len(new_codes) == 10
    assert all(code in page for code in new_codes)
    assert not set(old_codes) & set(new_codes)
    # the old codes no longer log in
    again = Client()
    post_password(again, "alice")
    refused = again.post("/login/code/", {"code": old_codes[0]})
    assert refused.status_code == 400
    assert "not right or was already used" in refused.content.decode()


def test_the_new_codes_are_shown_only_once():
    client, user, secret, _, step = _with_backup_codes()
    _regenerate(client, DEFAULT_PASSWORD, code_at_step(secret, step + 1))
    client.get("/setup/backup-codes/")
    page = client.get("/setup/backup-codes/").content.decode()
    assert twofactor.backup_codes(user)[0] not in page
    assert "You have 10 unused codes" in page


def test_a_post_without_password_and_code_changes_nothing():
    client, user, _, old_codes, _ = _with_backup_codes()
    response = client.post("/setup/backup-codes/", {})
    assert response.status_code == 400
    assert response.content.decode().count("This field is required.") == 2
    assert twofactor.backup_codes(user) == old_codes


def test_a_wrong_password_is_refused_and_the_old_codes_still_log_in():
    client, user, secret, old_codes, step = _with_backup_codes()
    response = _regenerate(client, "not the password at all", code_at_step(secret, step + 1))
    assert response.status_code == 400
    assert "That password is not right." in response.content.decode()
    assert twofactor.backup_codes(user) == old_codes
    again = Client()
    post_password(again, "alice")
    assert again.post("/login/code/", {"code": old_codes[0]}).status_code == 302


def test_a_wrong_code_is_refused_with_a_message():
    client, user, secret, old_codes, step = _with_backup_codes()
    right = code_at_step(secret, step + 1)
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    response = _regenerate(client, DEFAULT_PASSWORD, wrong)
    assert response.status_code == 400
    assert "That code is not right" in response.content.decode()
    assert twofactor.backup_codes(user) == old_codes


def test_the_code_used_to_log_in_cannot_make_new_codes():
    client, user, secret, old_codes, step = _with_backup_codes()
    response = _regenerate(client, DEFAULT_PASSWORD, code_at_step(secret, step))
    assert response.status_code == 400
    assert "already used" in response.content.decode()
    assert twofactor.backup_codes(user) == old_codes


def test_a_code_making_new_codes_cannot_be_used_again():
    client, user, secret, _, step = _with_backup_codes()
    code = code_at_step(secret, step + 1)
    assert _regenerate(client, DEFAULT_PASSWORD, code).status_code == 302
    made = twofactor.backup_codes(user)
    response = _regenerate(client, DEFAULT_PASSWORD, code)
    assert response.status_code == 400
    assert "already used" in response.content.decode()
    assert twofactor.backup_codes(user) == made


def test_a_backup_code_cannot_make_new_backup_codes():
    client, user, _, old_codes, _ = _with_backup_codes()
    response = _regenerate(client, DEFAULT_PASSWORD, old_codes[0])
    assert response.status_code == 400
    assert "A backup code does not work here" in response.content.decode()
    assert twofactor.backup_codes(user) == old_codes  # and that code was not spent


def test_huge_inputs_are_refused_with_a_message():
    client, user, _, old_codes, _ = _with_backup_codes()
    response = _regenerate(client, "x" * 5000, "1" * 5000)
    assert response.status_code == 400
    body = response.content.decode()
    assert "at most 1024 characters" in body
    assert "at most 32 characters" in body
    assert twofactor.backup_codes(user) == old_codes


def test_wrong_passwords_on_the_backup_codes_page_lock_the_login(settings):
    settings.AXES_FAILURE_LIMIT = 3
    client, user, secret, old_codes, step = _with_backup_codes()
    code = code_at_step(secret, step + 1)
    for _ in range(2):
        assert _regenerate(client, "wrong wrong wrong", code).status_code == 400
    response = _regenerate(client, "wrong wrong wrong", code)
    assert response.status_code == 429
    assert "Too many failed logins" in response.content.decode()
    # the right password and code are refused too, here and on the login page
    assert _regenerate(client, DEFAULT_PASSWORD, code).status_code == 429
    assert twofactor.backup_codes(user) == old_codes
    assert post_password(Client(), "alice").status_code == 429


def test_the_codes_right_after_enrolment_are_shown_without_asking_again():
    make_person("bob", totp=False)
    client = Client()
    post_password(client, "bob")
    client.get("/setup/2fa/")
    client.post("/setup/2fa/", {"code": pyotp.TOTP(pending_secret("bob")).now()})
    page = client.get("/setup/backup-codes/").content.decode()
    codes = twofactor.backup_codes(User.objects.get(username="bob"))
    assert len(codes) == 10
    assert all(code in page for code in codes)
    assert 'name="password"' not in page


# --- a session with only the password is short-lived ---------------------------------


def test_a_session_with_only_the_password_ends_after_the_short_time(settings):
    settings.UNVERIFIED_SESSION_S = 120
    make_person("alice")
    client = Client()
    post_password(client, "alice")
    assert 110 <= client.session.get_expiry_age() <= 120


def test_after_the_code_the_session_has_the_normal_idle_timeout():
    _, secret = make_person("alice")
    client = logged_in(Client(), "alice", secret)
    assert client.session.get_expiry_age() == 3600
    assert "_session_expiry" not in client.session


def test_after_enrolment_the_session_has_the_normal_idle_timeout():
    make_person("bob", totp=False)
    client = Client()
    post_password(client, "bob")
    client.get("/setup/2fa/")
    client.post("/setup/2fa/", {"code": pyotp.TOTP(pending_secret("bob")).now()})
    assert client.session.get_expiry_age() == 3600
    assert "_session_expiry" not in client.session


def test_an_unverified_session_past_the_short_time_lands_on_the_login_page():
    make_person("alice")
    client = Client()
    post_password(client, "alice")
    _age_session(client, 301)
    response = client.get("/login/code/", follow=True)
    assert response.redirect_chain[-1][0] == "/login/"
    assert 'name="username"' in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_an_unverified_session_cannot_be_kept_alive_by_requests():
    make_person("alice")
    client = Client()
    post_password(client, "alice")
    _age_session(client, 200)
    assert client.get("/login/code/").status_code == 200
    _age_session(client, 101)
    assert client.get("/login/code/")["Location"] == "/login/"


def test_a_verified_session_outlives_the_short_time():
    _, secret = make_person("alice")
    client = logged_in(Client(), "alice", secret)
    _age_session(client, 301)
    assert client.get("/profile/").status_code == 200


def test_a_verified_person_who_sends_the_password_again_stays_verified():
    _, secret = make_person("alice")
    client = logged_in(Client(), "alice", secret)
    post_password(client, "alice")
    assert client.session.get_expiry_age() == 3600
    assert client.get("/profile/").status_code == 200
