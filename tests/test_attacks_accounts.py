"""Attacks on the browser side of a node: what the attacker gets and what the victim keeps.

Already proven elsewhere (one line per attack, so this file reads as the complete list):
- TOTP replay, a code accepted once is refused again:
  test_accounts_login.test_a_code_cannot_be_used_twice (and an older code:
  test_an_older_code_than_the_last_used_one_is_refused; admin login:
  test_accounts_admin.test_the_admin_login_refuses_a_code_that_was_already_used; re-auth:
  test_accounts_reauth.test_a_code_making_new_codes_cannot_be_used_again)
- TOTP brute force in one session is throttled:
  test_accounts_login.test_repeated_wrong_codes_are_throttled_with_a_message
- Backup codes are single use: test_accounts_login.test_a_backup_code_logs_in_once
- Lockout after wrong passwords, even for the right one then:
  test_accounts_login.test_wrong_passwords_lock_the_login_with_a_clear_page; wrong passwords
  on the backup codes page count too: test_accounts_reauth
  .test_wrong_passwords_on_the_backup_codes_page_lock_the_login
- A password-only session ends soon and cannot be kept alive:
  test_accounts_reauth.test_an_unverified_session_cannot_be_kept_alive_by_requests
- The admin without a second factor, with a wrong code, or for non-staff:
  test_accounts_admin.test_the_admin_refuses_a_staff_member_without_a_second_factor,
  test_the_admin_refuses_a_staff_member_with_a_wrong_code,
  test_the_admin_refuses_people_who_are_not_staff
- Another session's enrolment secret: test_hardening_accounts_enrolment (whole file)
- Retrying someone else's message (service level):
  test_messaging_services.test_someone_elses_message_cannot_be_retried
- Names the protocol refuses in a path are a 404: test_url_converters
"""

from __future__ import annotations

import re
from datetime import timedelta
from urllib.parse import urljoin, urlsplit

import pyotp
import pytest
from django.conf import settings as django_settings
from django.contrib.auth.hashers import Argon2PasswordHasher
from django.contrib.sessions.models import Session
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone

from accounts import twofactor
from accounts.models import Profile, User, UserSession
from messaging import delivery, sending
from messaging.models import Message, Outbox
from peers.models import KeyChangeAck
from tests.helpers.accounts import logged_in, pending_secret, post_password, step_now
from tests.helpers.factories import DEFAULT_PASSWORD, code_at_step, make_person
from tests.helpers.messaging import (
    join_local_node,
    make_remote_node,
    make_remote_person,
    stored_message,
)

pytestmark = pytest.mark.django_db

PRODUCTION_HASHERS = list(django_settings.PASSWORD_HASHERS)
ATTACKER_IP = "203.0.113.9"
VICTIM_IP = "198.51.100.7"
HOME = "/chats/"


@pytest.fixture(autouse=True)
def fast_hashing(settings):
    """Argon2 costs most of a login; these tests are about what the pages answer."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def login_from(client: Client, ip: str, username: str, password: str = DEFAULT_PASSWORD):
    return client.post("/login/", {"username": username, "password": password}, REMOTE_ADDR=ip)


def wrong_code(secret: str) -> str:
    right = code_at_step(secret, step_now())
    return f"{(int(right) + 1) % 1_000_000:06d}"


def page_without_tokens(response, *names: str) -> str:
    """The page as a person reads it: without the per-render CSRF token and the echoed names."""
    page = re.sub(r'name="csrfmiddlewaretoken" value="[^"]*"', "", response.content.decode())
    for name in names:
        page = page.replace(name, "NAME")
    return page


def lands_on_this_site(location: str) -> bool:
    """Whether a browser following this Location stays on the node (http://testserver)."""
    target = urlsplit(urljoin("http://testserver/login/", location))
    return target.scheme in ("http", "https") and target.netloc == "testserver"


# --- credential stuffing and lockout ------------------------------------------------------
def test_stuffing_one_persons_password_locks_that_name_from_that_address_only():
    make_person("alice")
    attacker = Client()
    answers = [
        login_from(attacker, ATTACKER_IP, "alice", f"leaked password {n}").status_code
        for n in range(django_settings.AXES_FAILURE_LIMIT)
    ]
    assert answers == [400] * (django_settings.AXES_FAILURE_LIMIT - 1) + [429]

    # From the attacker's address even the right password is refused now, with no session.
    locked = login_from(attacker, ATTACKER_IP, "alice")
    assert locked.status_code == 429
    assert "Too many failed logins" in locked.content.decode()
    assert "_auth_user_id" not in attacker.session
    # Alice, from her own address, is not locked out by the attacker.
    victim = Client()
    response = login_from(victim, VICTIM_IP, "alice")
    assert (response.status_code, response["Location"]) == (302, "/login/code/")


def test_an_unknown_name_is_locked_out_exactly_like_a_real_one():
    make_person("alice")
    pages = {}
    for username in ("alice", "nobody"):
        client = Client()
        for n in range(django_settings.AXES_FAILURE_LIMIT):
            response = login_from(client, ATTACKER_IP, username, f"guess {n}")
        pages[username] = (response.status_code, page_without_tokens(response, username))
    assert pages["alice"] == pages["nobody"]
    assert pages["alice"][0] == 429


# --- an unknown name and a wrong password answer alike ------------------------------------
def test_an_unknown_name_and_a_wrong_password_get_the_same_page():
    make_person("alice")
    dave, _ = make_person("dave")
    User.objects.filter(pk=dave.pk).update(is_active=False)
    answers = {
        "wrong password": login_from(Client(), ATTACKER_IP, "alice", "not the password"),
        "unknown name": login_from(Client(), ATTACKER_IP, "nobod", "not the password"),
        "inactive, right password": login_from(Client(), ATTACKER_IP, "dave"),
    }
    seen = {
        what: (r.status_code, page_without_tokens(r, "alice", "nobod", "dave"))
        for what, r in answers.items()
    }
    assert seen["wrong password"] == seen["unknown name"] == seen["inactive, right password"]
    assert seen["wrong password"][0] == 400
    assert "Wrong username or password." in seen["wrong password"][1]


def test_an_unknown_name_costs_the_same_password_hashing_as_a_wrong_password(settings, monkeypatch):
    """Timing, without timing: Django's ModelBackend hashes the given password for a name
    it does not know (set_password on a throwaway user), so both answers pay one Argon2
    run with the same parameters. Speed belongs in benchmarks, not in a timed unit test."""
    settings.PASSWORD_HASHERS = PRODUCTION_HASHERS
    assert PRODUCTION_HASHERS[0] == "django.contrib.auth.hashers.Argon2PasswordHasher"
    make_person("alice")
    runs: list[tuple[str, int, int, int]] = []
    hasher = Argon2PasswordHasher

    def counted(kind, original):
        def run(self, *args, **kwargs):
            runs.append((kind, self.time_cost, self.memory_cost, self.parallelism))
            return original(self, *args, **kwargs)

        return run

    monkeypatch.setattr(hasher, "encode", counted("hash", hasher.encode))
    monkeypatch.setattr(hasher, "verify", counted("verify", hasher.verify))

    login_from(Client(), ATTACKER_IP, "alice", "not the password")
    wrong_password = list(runs)
    runs.clear()
    login_from(Client(), ATTACKER_IP, "nobody", "not the password")
    unknown_name = list(runs)

    assert [r[1:] for r in wrong_password] == [r[1:] for r in unknown_name]
    assert len(unknown_name) == 1  # exactly one Argon2 run, as for a real person


# --- TOTP replay across doors -----------------------------------------------------------------
def test_a_code_accepted_at_the_peoples_login_is_refused_at_the_admin_login():
    """Someone who watched root type a code cannot use it at the admin's own login form."""
    _, secret = make_person("root", staff=True)
    code = code_at_step(secret, step_now())
    logged_in(Client(), "root", secret)  # root uses the code of this step

    watcher = Client()
    response = watcher.post(
        "/admin/login/?next=/admin/",
        {"username": "root", "password": DEFAULT_PASSWORD, "otp_token": code, "next": "/admin/"},
    )

    assert response.status_code == 200
    assert "Invalid token" in response.content.decode()
    assert watcher.get("/admin/").status_code == 302


# --- TOTP brute force across sessions ------------------------------------------------------
def test_a_fresh_session_does_not_reset_the_code_throttle():
    """The attacker knows the password and opens a new session for each guess."""
    _, secret = make_person("alice")
    first = Client()
    post_password(first, "alice")
    assert first.post("/login/code/", {"code": wrong_code(secret)}).status_code == 400

    second = Client()
    post_password(second, "alice")
    response = second.post("/login/code/", {"code": code_at_step(secret, step_now())})
    assert response.status_code == 400
    assert "Too many wrong codes" in response.content.decode()
    assert second.get("/profile/").status_code == 302


def test_guessing_backup_codes_is_throttled_too():
    user, _ = make_person("alice")
    codes = twofactor.create_backup_codes(user=user)
    client = Client()
    post_password(client, "alice")
    assert client.post("/login/code/", {"code": "aaaaaaaa"}).status_code == 400
    response = client.post("/login/code/", {"code": codes[0]})
    assert response.status_code == 400
    assert "Too many wrong codes" in response.content.decode()
    assert client.get("/profile/").status_code == 302
    assert len(twofactor.backup_codes(user)) == 10  # the right code was not spent


# --- session fixation ----------------------------------------------------------------------
def test_the_session_key_changes_at_the_password_step():
    make_person("alice")
    client = Client()
    session = client.session  # an anonymous session whose key the attacker planted
    session["planted"] = True
    session.save()
    planted = session.session_key
    client.cookies[django_settings.SESSION_COOKIE_NAME] = planted
    post_password(client, "alice")
    assert client.session.session_key != planted
    assert not Session.objects.filter(session_key=planted).exists()


def test_the_session_key_changes_at_the_code_step():
    """Whoever learned the key of the password-only session does not share the verified one."""
    _, secret = make_person("alice")
    victim = Client()
    post_password(victim, "alice")
    half_key = victim.session.session_key
    attacker = Client()
    attacker.cookies[django_settings.SESSION_COOKIE_NAME] = half_key

    response = victim.post("/login/code/", {"code": code_at_step(secret, step_now())})

    assert response.status_code == 302
    assert victim.session.session_key != half_key
    assert victim.get("/profile/").status_code == 200
    assert attacker.get("/profile/").status_code == 302
    assert not Session.objects.filter(session_key=half_key).exists()
    # Ending sessions (logout elsewhere, password change) still finds the new one.
    assert UserSession.objects.filter(session_key=victim.session.session_key).exists()
    assert not UserSession.objects.filter(session_key=half_key).exists()


def test_the_session_key_changes_at_enrolment():
    make_person("bob", totp=False)
    victim = Client()
    post_password(victim, "bob")
    victim.get("/setup/2fa/")
    half_key = victim.session.session_key
    attacker = Client()
    attacker.cookies[django_settings.SESSION_COOKIE_NAME] = half_key

    response = victim.post("/setup/2fa/", {"code": pyotp.TOTP(pending_secret("bob")).now()})

    assert response["Location"] == "/setup/backup-codes/"
    assert victim.session.session_key != half_key
    assert attacker.get("/setup/backup-codes/").status_code == 302
    assert victim.get("/profile/").status_code == 200


# --- CSRF on every state-changing form ------------------------------------------------------
_APPS = ("accounts", "messaging", "peers")


def _routes(patterns, namespace=None):
    for entry in patterns:
        if isinstance(entry, URLResolver):
            yield from _routes(entry.url_patterns, entry.namespace or namespace)
        elif isinstance(entry, URLPattern) and namespace in _APPS:
            yield f"{namespace}:{entry.name}", entry


ROUTES = dict(_routes(get_resolver().url_patterns))
# A value for every path parameter of the apps' URLs; a new parameter needs one here.
SAMPLE_ARGS = {
    "username": "bob",
    "message_id": 1,
    "file_id": "0f0e4c52-3c8e-4f53-9d0c-5b8f7a1c2d3e",
    "group_id": "5a1d2c3b-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
}
# Exempt from the middleware's check but checking the token itself: an upload's body is
# read through its own upload handler, which must be in place before anything reads it.
CHECKS_ITS_OWN_TOKEN = {"messaging:upload", "messaging:group_upload"}


def test_only_the_signed_peer_api_is_exempt_from_csrf():
    exempt = {
        name: reverse(name, kwargs={k: SAMPLE_ARGS[k] for k in p.pattern.converters})
        for name, p in ROUTES.items()
        if getattr(p.callback, "csrf_exempt", False)
    }
    assert exempt == {
        "messaging:inbox": "/api/v1/inbox",
        "messaging:peer_file": f"/api/v1/files/{SAMPLE_ARGS['file_id']}",
        "messaging:upload": "/chat/bob/files/",
        "messaging:group_upload": f"/groups/{SAMPLE_ARGS['group_id']}/files/",
        "peers:peer_profile": "/api/v1/profiles/bob",
        "peers:peer_profile_picture": "/api/v1/profiles/bob/picture",
    }


@pytest.mark.parametrize(
    "name",
    sorted(
        n
        for n, p in ROUTES.items()
        if n in CHECKS_ITS_OWN_TOKEN or not getattr(p.callback, "csrf_exempt", False)
    ),
)
def test_a_cross_site_post_without_token_is_refused(name):
    join_local_node("hq")
    _, secret = make_person("alice")
    make_person("bob")
    victim = logged_in(Client(), "alice", secret)
    forged = Client(enforce_csrf_checks=True)
    forged.cookies = victim.cookies  # the victim's browser sends its cookies along
    path = reverse(name, kwargs={k: SAMPLE_ARGS[k] for k in ROUTES[name].pattern.converters})
    form = {
        "text": "wire the money",
        "full_name": "Mallory",
        "old_password": DEFAULT_PASSWORD,
        "new_password1": "attacker chosen passphrase",
        "new_password2": "attacker chosen passphrase",
        "username": "alice",
        "password": DEFAULT_PASSWORD,
        "code": "123456",
    }

    response = forged.post(path, form)

    assert response.status_code == 403
    assert "security token" in response.content.decode()
    assert victim.get("/profile/").status_code == 200  # still logged in: no logout either
    alice = User.objects.get(username="alice")
    assert alice.check_password(DEFAULT_PASSWORD)
    assert Profile.objects.get(user=alice).full_name == "Alice"
    assert not Message.objects.exists()
    assert not KeyChangeAck.objects.exists()


# --- open redirects -------------------------------------------------------------------------
EVIL_TARGETS = [
    "https://evil.example/",
    "//evil.example/",
    "/\\evil.example/",
    "\\\\evil.example/",
    "http:///evil.example/",
    "https:evil.example",
    "http://testserver@evil.example/",
    " //evil.example/",
    "\t//evil.example/",
    "javascript:alert(document.cookie)",
]


@pytest.mark.parametrize("target", EVIL_TARGETS)
def test_next_on_the_login_form_never_leaves_the_site(target):
    _, secret = make_person("alice")
    client = Client()
    page = client.get("/login/", {"next": target}).content.decode()
    assert "evil.example" not in page and "javascript:" not in page
    client.post(
        "/login/?" + "next=" + target,
        {"username": "alice", "password": DEFAULT_PASSWORD, "next": target},
    )
    response = client.post("/login/code/", {"code": code_at_step(secret, step_now())})
    assert response.status_code == 302
    assert response["Location"] == HOME


@pytest.mark.parametrize("target", EVIL_TARGETS)
def test_next_given_to_a_logged_in_person_never_leaves_the_site(target):
    _, secret = make_person("alice")
    client = logged_in(Client(), "alice", secret)
    response = client.get("/login/", {"next": target})
    assert response.status_code == 302
    assert lands_on_this_site(response["Location"])
    assert response["Location"] == HOME


def test_next_posted_to_the_code_step_or_logout_is_ignored():
    _, secret = make_person("alice")
    client = Client()
    post_password(client, "alice")
    for target in EVIL_TARGETS:
        assert client.get("/login/code/", {"next": target}).status_code == 200
    response = client.post(
        "/login/code/?next=//evil.example/",
        {"code": code_at_step(secret, step_now()), "next": "//evil.example/"},
    )
    assert response["Location"] == HOME
    response = client.post("/logout/?next=//evil.example/", {"next": "https://evil.example/"})
    assert response["Location"] == "/login/"


@pytest.mark.parametrize("target", ["//evil.example/", "https://evil.example/", "/\\evil.example/"])
def test_next_on_the_admin_login_never_leaves_the_site(target):
    _, secret = make_person("root", staff=True)
    response = Client().post(
        "/admin/login/?next=" + target,
        {
            "username": "root",
            "password": DEFAULT_PASSWORD,
            "otp_token": code_at_step(secret, step_now()),
            "next": target,
        },
    )
    assert response.status_code == 302
    assert lands_on_this_site(response["Location"])


# --- the admin without a second factor ------------------------------------------------------
def test_a_staff_members_password_alone_does_not_open_the_admin():
    make_person("root", staff=True)
    client = Client()
    post_password(client, "root")  # the people's login: the session is not verified yet
    for path in ("/admin/", "/admin/accounts/user/", "/admin/login/"):
        response = client.get(path)
        assert response.status_code == 302, path
        assert response["Location"].startswith("/login/code/"), path
    response = client.post("/admin/accounts/user/1/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert User.objects.filter(username="root").exists()


# --- one person reading or changing another's data ------------------------------------------
@pytest.fixture
def alice_and_bob_talk():
    """alice and bob (this node) exchanged a confidential message; carol is a colleague."""
    join_local_node("hq")
    alice, _ = make_person("alice")
    bob, _ = make_person("bob")
    _, carol_secret = make_person("carol")
    stored_message(alice, "bob", direction="out", text="Acquisition of Rival Corp on Monday")
    stored_message(bob, "alice", direction="in", text="Acquisition of Rival Corp on Monday")
    carol = logged_in(Client(), "carol", carol_secret)
    return alice, carol


def test_a_colleague_cannot_read_a_conversation_through_the_json_poll(alice_and_bob_talk):
    _, carol = alice_and_bob_talk
    their_ids = list(Message.objects.values_list("id", flat=True))
    ids = ",".join(map(str, their_ids))
    for peer in ("bob", "alice"):  # and asking for their bubbles by id
        response = carol.get(f"/chat/{peer}/messages.json?after=0&render={ids}")
        assert response.status_code == 200
        assert response.json() == {"messages": [], "statuses": {}, "files": {}, "rendered": {}}
    # Marking read through the poll touched nothing of theirs.
    assert not Message.objects.filter(id__in=their_ids, read_at__isnull=False).exists()


def test_a_colleague_cannot_read_a_conversation_through_the_page(alice_and_bob_talk):
    _, carol = alice_and_bob_talk
    anchor = Message.objects.order_by("-id").first().id + 1
    for path in ("/chat/bob/", "/chat/alice/", f"/chat/bob/?before={anchor}"):
        page = carol.get(path).content.decode()
        assert "Rival Corp" not in page, path


def test_a_colleague_cannot_retry_someone_elses_failed_message(alice_and_bob_talk, settings):
    alice, carol = alice_and_bob_talk
    make_remote_person(make_remote_node("branch"), "rita")
    settings.DELIVERY_MAX_AGE_S = 60
    message = sending.send_message(sender=alice, recipient_username="rita", text="x")
    Outbox.objects.update(queued_at=timezone.now() - timedelta(seconds=61))
    delivery.sweep_outbox()

    response = carol.post(f"/chat/rita/retry/{message.id}/", follow=True)

    assert "Only a failed message can be sent again." in response.content.decode()
    message.refresh_from_db()
    assert message.status == "failed"
    assert Outbox.objects.get(message=message).failed_at is not None


def test_a_colleague_cannot_edit_someone_elses_profile(alice_and_bob_talk):
    alice, carol = alice_and_bob_talk
    before = Profile.objects.get(user=alice)
    response = carol.post(
        "/profile/?user=alice&username=alice",
        {
            "full_name": "Carol Edited",
            "position": "",
            "location": "",
            "description": "",
            "username": "alice",
            "user": alice.pk,
            "user_id": alice.pk,
        },
    )
    assert response.status_code == 302
    after = Profile.objects.get(user=alice)
    assert (after.full_name, after.updated_at) == (before.full_name, before.updated_at)
    assert Profile.objects.get(user__username="carol").full_name == "Carol Edited"
    # The editing page shows only one's own profile, whatever the query string says.
    page = carol.get("/profile/?user=alice&username=alice").content.decode()
    assert 'value="Carol Edited"' in page and 'value="Alice"' not in page
