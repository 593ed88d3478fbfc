"""The conversations home (/chats/), its rows for the page's script (?rows=1) and the
unread counts (/chat/unread.json), as a logged-in person sees them."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import Profile
from messaging.models import Message
from peers.models import DirectorySync, DirectoryUser
from tests.helpers.accounts import post_password, step_now
from tests.helpers.factories import DEFAULT_PASSWORD, code_at_step, make_person
from tests.helpers.messaging import (
    alice_of_hq,
    join_local_node,
    make_local_person,
    make_remote_node,
    make_remote_person,
    stored_message,
    with_file,
)

pytestmark = pytest.mark.django_db

ROW = re.compile(r'<li class="chat-row[^"]*" data-peer="([^"]+)"')


@pytest.fixture(autouse=True)
def fast_hashing(settings):
    """Argon2 costs most of a login; these tests are about what the pages show."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def alice():
    """alice of hq, logged in; rita of branch and bob of hq to talk to; a fresh directory."""
    return alice_of_hq()


def received(owner, peer: str, text: str = "hello", *, at: int, read: bool = False) -> Message:
    return stored_message(
        owner,
        peer,
        direction="in",
        text=text,
        created_ms=at,
        read_at=timezone.now() if read else None,
    )


def sent(owner, peer: str, text: str = "hello", *, at: int) -> Message:
    return stored_message(owner, peer, direction="out", text=text, created_ms=at)


def home(client: Client) -> str:
    response = client.get("/chats/")
    assert response.status_code == 200
    return response.content.decode()


def rows_of(page: str) -> str:
    """The list's rows as the page draws them (the inside of <ol id="conversations">)."""
    match = re.search(r'<ol id="conversations"[^>]*>(.*?)</ol>', page, re.S)
    assert match, page
    return match.group(1)


def row(page: str, peer: str) -> str:
    match = re.search(rf'<li class="chat-row[^"]*" data-peer="{peer}".*?</li>', page, re.S)
    assert match, f"no row for {peer}"
    return match.group(0)


# --- the list -------------------------------------------------------------------------------
def test_conversations_are_listed_most_recent_first(alice):
    carol = make_local_person("carol")
    sent(alice.user, "rita", "old", at=1_000)
    received(alice.user, "bob", "newest", at=3_000)
    sent(alice.user, carol.username, "middle", at=2_000)
    received(alice.user, "rita", "rita again", at=4_000)

    assert ROW.findall(home(alice)) == ["rita", "bob", "carol"]


def test_a_row_links_to_the_conversation_and_shows_name_office_and_time(alice):
    received(alice.user, "rita", "hi", at=1_700_000_000_000)
    rita = row(home(alice), "rita")
    assert 'href="/chat/rita/"' in rita
    assert "Rita" in rita and "branch" in rita
    assert 'data-ms="1700000000000"' in rita


def test_a_row_shows_the_first_line_of_the_last_message(alice):
    sent(alice.user, "rita", "earlier", at=1_000)
    received(alice.user, "rita", "\n  First line  \nsecond line", at=2_000)
    rita = row(home(alice), "rita")
    assert "First line" in rita
    assert "second line" not in rita and "earlier" not in rita


def test_a_long_last_line_is_cut_to_about_80_characters(alice):
    received(alice.user, "rita", "word " * 100, at=1_000)
    preview = re.search(r'class="chat-row__last"[^>]*>([^<]*)</span>', home(alice))
    assert preview
    text = preview.group(1).strip()
    assert len(text) <= 80 and text.endswith("…")


def test_ones_own_last_message_is_marked_as_such(alice):
    sent(alice.user, "rita", "see you", at=1_000)
    assert "You: </span>see you" in row(home(alice), "rita")


@pytest.mark.parametrize(
    ("name", "kind", "mime", "label"),
    [
        ("minutes.pdf", "pdf", "application/pdf", "PDF: minutes.pdf"),
        ("photo.png", "image", "image/png", "Photo: photo.png"),
        ("notes.zip", "download", "application/zip", "File: notes.zip"),
    ],
)
def test_a_file_shows_its_kind_and_name(alice, name, kind, mime, label):
    with_file(received(alice.user, "rita", "", at=1_000), name, kind, mime)
    rita = row(home(alice), "rita")
    assert "📎" in rita and label in rita


def test_presence_shows_as_on_the_users_page(alice):
    DirectoryUser.objects.filter(username="rita").update(status="online")
    received(alice.user, "rita", at=1_000)
    assert "status--online" in row(home(alice), "rita")


def test_presence_is_unknown_while_the_directory_is_stale(alice):
    DirectoryUser.objects.filter(username="rita").update(status="online")
    DirectorySync.objects.update(last_success_at=timezone.now() - timedelta(days=1))
    received(alice.user, "rita", at=1_000)
    assert "status--unknown" in row(home(alice), "rita")


def test_a_person_of_this_office_shows_their_own_profile_name(alice):
    Profile.objects.filter(user__username="bob").update(full_name="Robert Local")
    received(alice.user, "bob", at=1_000)
    assert "Robert Local" in row(home(alice), "bob")


def test_a_person_nobody_knows_any_more_still_shows_by_username(alice):
    received(alice.user, "ghost", "boo", at=1_000)
    ghost = row(home(alice), "ghost")
    assert "ghost" in ghost and "status--unknown" in ghost


def test_with_no_conversations_the_page_points_to_the_users_page(alice):
    page = home(alice)
    assert "No conversations yet" in page and 'href="/users/"' in page
    assert ROW.findall(page) == []


def test_the_page_has_a_heading_a_live_list_and_its_script(alice):
    page = home(alice)
    assert "<h1" in page and "Conversations</h1>" in page
    assert 'data-rows-url="/chats/?rows=1"' in page and 'aria-live="polite"' in page
    assert "js/home.js" in page
    assert '<a href="/chats/" aria-current="page">Conversations</a>' in page


def test_a_long_history_shows_the_latest_conversations_with_a_note(alice, monkeypatch):
    from messaging import queries

    monkeypatch.setattr(queries, "CONVERSATIONS_MAX", 2)
    for i in range(3):
        received(alice.user, f"peer{i}", at=1_000 + i)
    page = home(alice)
    assert ROW.findall(page) == ["peer2", "peer1"]
    assert "Showing your 2 most recent conversations" in page


# --- unread counts --------------------------------------------------------------------------
def test_the_unread_count_counts_received_unread_messages_only(alice):
    received(alice.user, "rita", "one", at=1_000)
    received(alice.user, "rita", "two", at=2_000)
    received(alice.user, "rita", "seen", at=500, read=True)
    sent(alice.user, "rita", "mine", at=3_000)
    received(alice.user, "bob", "read already", at=1_000, read=True)
    page = home(alice)
    assert re.search(r'class="chat-row__unread">2<', row(page, "rita"))
    assert "chat-row__unread" not in row(page, "bob")


def test_unread_json_counts_per_conversation(alice):
    received(alice.user, "rita", at=1_000)
    received(alice.user, "rita", at=2_000)
    received(alice.user, "bob", at=3_000)
    received(alice.user, "bob", at=4_000, read=True)
    sent(alice.user, "bob", at=5_000)
    response = alice.get("/chat/unread.json")
    assert response.json() == {"total": 3, "by_peer": {"rita": 2, "bob": 1}}
    assert "no-cache" in response["Cache-Control"]


def test_unread_json_is_zero_with_nothing_unread(alice):
    assert alice.get("/chat/unread.json").json() == {"total": 0, "by_peer": {}}


def test_unread_json_needs_a_verified_login(alice):
    response = Client().get("/chat/unread.json")
    assert (response.status_code, response.json()["error"]["code"]) == (401, "login_required")
    half = Client()
    post_password(half, "alice")  # password only: no second factor yet
    response = half.get("/chat/unread.json")
    assert (response.status_code, response.json()["error"]["code"]) == (401, "login_required")


# --- privacy and escaping -------------------------------------------------------------------
def test_another_persons_conversations_are_never_shown(alice):
    bob = make_local_person("bobby")
    received(bob, "rita", "for bobby only", at=1_000)
    sent(bob, "mallory", "also private", at=2_000)
    received(alice.user, "rita", "for alice", at=500, read=True)
    page = home(alice)
    assert "for bobby only" not in page and "also private" not in page
    assert ROW.findall(page) == ["rita"]
    assert "chat-row__unread" not in page
    assert alice.get("/chat/unread.json").json() == {"total": 0, "by_peer": {}}
    assert "mallory" not in alice.get("/chats/?rows=1").json()["html"]


def test_a_script_in_a_message_is_shown_as_text(alice):
    received(alice.user, "rita", "<script>alert(1)</script>", at=1_000)
    for html in (home(alice), alice.get("/chats/?rows=1").json()["html"]):
        assert "<script>alert(1)" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_a_hostile_name_or_file_name_is_shown_as_text(alice):
    hostile = '"><img src=x onerror=alert(1)>'
    DirectoryUser.objects.filter(username="rita").update(full_name=hostile)
    Profile.objects.filter(user__username="bob").update(full_name=hostile)
    received(alice.user, "rita", at=1_000)
    with_file(received(alice.user, "bob", at=2_000), hostile + ".pdf", "pdf", "application/pdf")
    for html in (home(alice), alice.get("/chats/?rows=1").json()["html"]):
        assert "<img src=x" not in html
        assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in html


# --- the rows for the page's script -----------------------------------------------------------
def test_the_rows_json_equals_the_pages_rows(alice):
    received(alice.user, "rita", "hi", at=1_000)
    sent(alice.user, "bob", "yo", at=2_000)
    received(alice.user, "bob", "unread", at=3_000)
    answer = alice.get("/chats/?rows=1")
    assert answer["Content-Type"] == "application/json"
    assert "no-cache" in answer["Cache-Control"]
    assert answer.json() == {"html": rows_of(home(alice)), "total_unread": 2}
    assert ROW.findall(answer.json()["html"]) == ["bob", "rita"]


def test_the_rows_json_needs_a_verified_login():
    join_local_node("hq")
    response = Client().get("/chats/?rows=1", HTTP_ACCEPT="application/json")
    assert (response.status_code, response.json()["error"]["code"]) == (401, "login_required")


def test_the_page_is_not_reachable_without_login():
    join_local_node("hq")
    response = Client().get("/chats/")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


def test_the_home_uses_a_fixed_number_of_queries(alice, django_assert_max_num_queries):
    received(alice.user, "rita", at=1)
    alice.get("/chats/")  # the session's first-request work (activity) out of the way
    with CaptureQueriesContext(connection) as one_conversation:
        home(alice)
    # the session, its person and device, and saving the session; the page's own five
    assert len(one_conversation) <= 12

    node = make_remote_node("far")
    peers = [make_remote_person(node, f"far{i}").username for i in range(50)]
    Message.objects.bulk_create(
        Message(
            envelope_id=uuid.uuid4(),
            owner=alice.user,
            peer_username=peers[i % 50],
            sender_username=peers[i % 50],
            recipient_username="alice",
            direction="in" if i % 3 else "out",
            text=f"message {i}",
            created_ms=1_000 + i,
            status="delivered",
            read_at=timezone.now() if i % 2 else None,
        )
        for i in range(2_000)
    )
    with django_assert_max_num_queries(len(one_conversation)):
        page = home(alice)
    assert len(ROW.findall(page)) == 51
    with django_assert_max_num_queries(len(one_conversation)):
        assert len(ROW.findall(alice.get("/chats/?rows=1").json()["html"])) == 51
    unread = sum(1 for i in range(2_000) if i % 3 and not i % 2) + 1
    with django_assert_max_num_queries(len(one_conversation) - 4):
        assert alice.get("/chat/unread.json").json()["total"] == unread


# --- where a login lands --------------------------------------------------------------------
def test_the_site_root_goes_to_the_conversations_home(alice):
    response = alice.get("/")
    assert (response.status_code, response["Location"]) == (302, "/chats/")


def where_login_lands(login_path: str = "/login/") -> tuple[Client, str]:
    """dora logs in (password at login_path, then the code): her client and the
    redirect the code step answers with."""
    join_local_node("hq")
    _, secret = make_person("dora")
    client = Client()
    client.post(login_path, {"username": "dora", "password": DEFAULT_PASSWORD})
    response = client.post("/login/code/", {"code": code_at_step(secret, step_now())})
    assert response.status_code == 302
    return client, response["Location"]


def test_logging_in_lands_on_the_conversations_home():
    client, target = where_login_lands()
    assert target == "/chats/"
    assert "Conversations</h1>" in client.get(target).content.decode()


def test_next_still_wins_over_the_conversations_home():
    assert where_login_lands("/login/?next=/users/")[1] == "/users/"
