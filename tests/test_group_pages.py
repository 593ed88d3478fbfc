"""The pages of group conversations (/groups/...), as a logged-in person sees them: making a
group, its conversation and members, the changes an admin makes, who has a message and
Retry, the page's poll and read receipts, and groups on the home and in search."""

from __future__ import annotations

import re
import uuid

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import User
from messaging import delivery, group_messages, groups
from messaging.models import Group, GroupDelivery, GroupMember, Message, Outbox
from tests.helpers.messaging import alice_of_hq, make_local_person

pytestmark = pytest.mark.django_db

HTML_NAME = "<script>alert(1)</script>"
ESCAPED_NAME = "&lt;script&gt;alert(1)&lt;/script&gt;"


@pytest.fixture(autouse=True)
def fast_hashing(settings):
    """Argon2 costs most of a login; these tests are about what the pages show."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def alice():
    """alice of hq, logged in; rita of branch and bob of hq to add; a fresh directory."""
    return alice_of_hq()


def bob() -> User:
    return User.objects.get(username="bob")


def alices_group(alice: Client, name: str = "Board", members=("bob", "rita")) -> Group:
    """A group alice made (its admin), with these people."""
    return groups.create_group(creator=alice.user, name=name, usernames=list(members))


def bobs_group(members=("alice", "rita"), name: str = "Deal team") -> Group:
    """A group bob made: alice, when in it, is a member who is not an admin."""
    return groups.create_group(creator=bob(), name=name, usernames=list(members))


def url(group: Group, rest: str = "") -> str:
    return f"/groups/{group.group_id}/{rest}"


def page(client: Client, path: str, status: int = 200) -> str:
    response = client.get(path)
    assert response.status_code == status, response.content[:500]
    return response.content.decode()


def title(html: str) -> str:
    match = re.search(r"<title>(.*?)</title>", html, re.S)
    assert match, html[:500]
    return match.group(1)


def member_row(html: str, username: str) -> str:
    match = re.search(rf'<li class="member-row" data-username="{username}">.*?</li>', html, re.S)
    assert match, f"no member row for {username}"
    return match.group(0)


def chat_row(html: str, group: Group) -> str:
    match = re.search(
        rf'<li class="chat-row[^"]*" data-peer="{group.conversation_key}".*?</li>', html, re.S
    )
    assert match, f"no home row for {group.name}"
    return match.group(0)


def bubble(html: str, message: Message) -> str:
    match = re.search(rf'<li class="bubble[^"]*" id="m-{message.id}".*?</li>', html, re.S)
    assert match, f"no bubble for message {message.id}"
    return match.group(0)


def delivery_row(html: str, username: str) -> str:
    match = re.search(rf'<tr data-username="{username}".*?</tr>', html, re.S)
    assert match, f"no delivery row for {username}"
    return match.group(0)


def received_by_alice(group: Group, text: str = "Numbers are in") -> Message:
    """bob's message to the group, delivered on this node: alice's copy of it."""
    group_messages.send_group_message(sender=bob(), group=group, text=text)
    delivery.deliver_pending(node="hq")
    return Message.objects.get(owner__username="alice", direction="in", text=text)


def status_text(html: str) -> str:
    match = re.search(r'<a class="status[^"]*" href="[^"]*">(.*?)</a>', html, re.S)
    assert match, html
    return match.group(1)


# --- making a group ---------------------------------------------------------------------------
def test_the_home_has_a_new_group_link(alice):
    assert 'href="/groups/new/">New group</a>' in page(alice, "/chats/")


def test_the_new_group_form_lists_the_people_one_can_add(alice):
    html = page(alice, "/groups/new/")
    assert 'name="member" value="bob"' in html
    assert 'name="member" value="rita"' in html
    assert 'name="member" value="alice"' not in html


def test_creating_a_group_opens_its_page(alice):
    response = alice.post("/groups/new/", {"name": "Board", "member": ["bob", "rita"]})
    group = Group.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/groups/{group.group_id}/"
    html = page(alice, response["Location"])
    assert '<h1 dir="auto">Board</h1>' in html
    assert {m.username for m in GroupMember.objects.filter(group=group)} == {
        "alice",
        "bob",
        "rita",
    }


def test_usernames_typed_on_the_form_are_added_too(alice):
    response = alice.post("/groups/new/", {"name": "Board", "names": "@rita, bob\n"})
    assert response.status_code == 302
    assert set(GroupMember.objects.values_list("username", flat=True)) == {"alice", "bob", "rita"}


@pytest.mark.parametrize(
    ("form", "error"),
    [
        ({"name": "", "member": ["bob"]}, "1 to 100 characters"),
        ({"name": "   ", "member": ["bob"]}, "1 to 100 characters"),
        ({"name": "bell\x07", "member": ["bob"]}, "1 to 100 characters"),
        ({"name": "two\nlines", "member": ["bob"]}, "1 to 100 characters"),
        ({"name": "x" * 101, "member": ["bob"]}, "1 to 100 characters"),
        ({"name": "Board", "names": "ghost"}, "There is nobody called &#x27;ghost&#x27;"),
        ({"name": "Board"}, "Choose at least one other person"),
        (
            {"name": "Board", "names": ",".join(f"p{i}" for i in range(10_000))},
            "A group has at most 256 members.",
        ),
    ],
    ids=["no-name", "spaces", "control", "newline", "long", "unknown", "nobody", "10000-names"],
)
def test_a_refused_form_is_shown_again_with_a_clear_error_and_nothing_is_made(alice, form, error):
    response = alice.post("/groups/new/", form)
    html = response.content.decode()
    assert response.status_code == 400
    assert 'role="alert"' in html and error in html
    assert 'action="/groups/new/"' in html
    assert not Group.objects.exists() and not Outbox.objects.exists()


def test_a_refused_form_keeps_what_was_typed_and_ticked(alice):
    response = alice.post("/groups/new/", {"name": "Board", "member": ["bob"], "names": "ghost"})
    html = response.content.decode()
    assert response.status_code == 400
    assert 'value="Board"' in html
    assert 'name="member" value="bob" checked' in html
    assert 'name="names" maxlength="4000" autocomplete="off" value="ghost"' in html


def test_ten_thousand_ticked_boxes_are_a_400_and_make_nothing(alice):
    response = alice.post(
        "/groups/new/", {"name": "Board", "member": [f"p{i}" for i in range(10_000)]}
    )
    assert response.status_code == 400
    assert not Group.objects.exists()


def test_the_new_group_page_needs_a_login():
    alice_of_hq()
    response = Client().get("/groups/new/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")


# --- names are text -----------------------------------------------------------------------------
def test_a_name_with_html_is_shown_escaped_on_the_group_page(alice):
    group = alices_group(alice, name=HTML_NAME)
    html = page(alice, url(group))
    assert ESCAPED_NAME in title(html)
    assert f'<h1 dir="auto">{ESCAPED_NAME}</h1>' in html
    assert HTML_NAME not in html


def test_a_name_with_html_is_shown_escaped_on_the_home(alice):
    group = alices_group(alice, name=HTML_NAME)
    html = page(alice, "/chats/")
    assert ESCAPED_NAME in chat_row(html, group)
    assert HTML_NAME not in html
    assert HTML_NAME not in alice.get("/chats/?rows=1").json()["html"]


def test_a_name_with_html_is_shown_escaped_on_the_message_page(alice):
    group = alices_group(alice, name=HTML_NAME)
    message = group_messages.send_group_message(sender=alice.user, group=group, text="hi")
    html = page(alice, url(group, f"messages/{message.id}/"))
    assert ESCAPED_NAME in title(html) and HTML_NAME not in html


def test_the_group_page_reads_its_bubbles_in_a_fixed_number_of_queries(alice):
    group = bobs_group()
    group_messages.send_group_message(sender=alice.user, group=group, text="mine")
    received_by_alice(group, "first")

    def queries_for_page() -> int:
        with CaptureQueriesContext(connection) as captured:
            page(alice, url(group))
        return len(captured)

    few = queries_for_page()
    for i in range(20):
        group_messages.send_group_message(sender=bob(), group=group, text=f"more {i}")
        group_messages.send_group_message(sender=alice.user, group=group, text=f"mine {i}")
    delivery.deliver_pending(node="hq")
    assert queries_for_page() == few


# --- members --------------------------------------------------------------------------------
def test_the_page_lists_members_with_their_office_and_an_admin_badge(alice):
    group = alices_group(alice)
    html = page(alice, url(group))
    assert "3 members" in html
    assert '<span class="badge">admin</span>' in member_row(html, "alice")
    assert "badge" not in member_row(html, "bob")
    assert "hq" in member_row(html, "bob")
    assert "branch" in member_row(html, "rita") and "Rita" in member_row(html, "rita")


def test_an_admin_sees_the_forms_that_change_the_group(alice):
    html = page(alice, url(alices_group(alice)))
    assert ">Add</button>" in html and ">Rename</button>" in html
    assert 'value="remove"' in member_row(html, "rita")
    assert "Make admin" in member_row(html, "rita")
    assert 'value="remove"' not in member_row(html, "alice")  # not oneself: Leave is for that


def test_a_member_who_is_not_an_admin_sees_no_change_forms(alice):
    html = page(alice, url(bobs_group()))
    assert ">Add</button>" not in html and ">Rename</button>" not in html
    assert 'value="remove"' not in html and "Make admin" not in html
    assert "Leave this group" in html
    assert '<span class="badge">admin</span>' in member_row(html, "bob")


def test_someone_never_in_the_group_cannot_see_or_touch_it(alice):
    group = bobs_group(members=("rita",))
    message = group_messages.send_group_message(sender=bob(), group=group, text="secret")
    assert alice.get(url(group)).status_code == 404
    assert alice.post(url(group), {"text": "let me in"}).status_code == 404
    poll = alice.get(url(group, "messages.json?after=0"))
    assert (poll.status_code, poll.json()["error"]["code"]) == (404, "unknown_group")
    read = alice.post(url(group, "read/"), {"up_to": message.id})
    assert (read.status_code, read.json()["error"]["code"]) == (404, "unknown_group")
    change = alice.post(url(group, "change/"), {"action": "rename", "name": "Mine"})
    assert change.status_code == 404
    assert alice.get(url(group, f"messages/{message.id}/")).status_code == 404
    retry = alice.post(url(group, f"messages/{message.id}/retry/"), {"username": "rita"})
    assert retry.status_code == 404
    group.refresh_from_db()
    assert group.name == "Deal team"
    assert not Message.objects.filter(owner=alice.user).exists()


@pytest.mark.parametrize("path", ["/groups/not-a-uuid/", f"/groups/{uuid.uuid4()}/"])
def test_a_bad_or_unknown_group_address_is_a_404(alice, path):
    assert alice.get(path).status_code == 404


def test_a_bad_page_cursor_is_a_4xx_not_a_500(alice):
    group = alices_group(alice)
    for query in ("?before=x", "?at=abc", "?at=99999", "?before=" + "9" * 30):
        assert alice.get(url(group) + query).status_code in (400, 404), query


# --- changes from the page --------------------------------------------------------------------
def test_an_admin_renames_the_group_from_the_page(alice):
    group = alices_group(alice)
    response = alice.post(url(group, "change/"), {"action": "rename", "name": "The board"})
    assert (response.status_code, response["Location"]) == (302, url(group))
    html = page(alice, url(group))
    assert '<h1 dir="auto">The board</h1>' in html and "Done." in html


def test_an_admin_adds_removes_and_promotes_from_the_page(alice):
    make_local_person("carol")
    group = alices_group(alice)
    alice.post(url(group, "change/"), {"action": "add", "names": "carol"})
    alice.post(url(group, "change/"), {"action": "remove", "member": "rita"})
    alice.post(url(group, "change/"), {"action": "promote", "member": "bob"})
    html = page(alice, url(group))
    assert "carol" in html and 'data-username="rita"' not in html
    assert '<span class="badge">admin</span>' in member_row(html, "bob")


def test_a_refused_change_is_explained_and_not_applied(alice):
    group = bobs_group()
    response = alice.post(url(group, "change/"), {"action": "rename", "name": "Mine"}, follow=True)
    assert "Only the group&#x27;s admins can change it." in response.content.decode()
    group.refresh_from_db()
    assert group.name == "Deal team"


def test_an_unknown_change_is_explained(alice):
    group = alices_group(alice)
    response = alice.post(url(group, "change/"), {"action": "explode"}, follow=True)
    assert "That change does not exist." in response.content.decode()
    assert Group.objects.get().seq == 1


def test_a_change_is_post_only(alice):
    group = alices_group(alice)
    assert alice.get(url(group, "change/")).status_code == 405


# --- sending ------------------------------------------------------------------------------------
def test_sending_from_the_page_stores_the_message_and_shows_it(alice):
    group = alices_group(alice)
    response = alice.post(url(group), {"text": "Hello <b>all</b>"})
    assert (response.status_code, response["Location"]) == (302, url(group))
    message = Message.objects.get(owner=alice.user, group=group)
    assert message.direction == "out"
    assert set(Outbox.objects.filter(kind="group_message").values_list("destination", flat=True))
    html = bubble(page(alice, url(group)), message)
    assert "Hello &lt;b&gt;all&lt;/b&gt;" in html


def test_an_empty_message_shows_the_compose_error(alice):
    group = alices_group(alice)
    response = alice.post(url(group), {"text": "   "})
    html = response.content.decode()
    assert response.status_code == 400
    assert 'id="compose-error"' in html and "Write something before sending." in html
    assert not Message.objects.exists()


def test_a_removed_member_sees_it_and_cannot_send(alice):
    group = bobs_group()
    groups.change_group(author=bob(), group=group, action="remove", usernames=["alice"])
    html = page(alice, url(group))
    assert "no longer a member" in html
    assert 'id="compose-text"' not in html and "Leave this group" not in html
    response = alice.post(url(group), {"text": "still here?"})
    assert 400 <= response.status_code < 500
    assert "no longer a member" in response.content.decode()
    assert not Message.objects.filter(owner=alice.user).exists()
    assert not Outbox.objects.filter(kind="group_message").exists()


def test_a_removed_member_can_still_mark_earlier_messages_read(alice):
    group = bobs_group()
    received = received_by_alice(group)
    groups.change_group(author=bob(), group=group, action="remove", usernames=["alice"])
    html = page(alice, url(group))
    section = html[html.index('id="conversation"') : html.index('id="members"')]
    assert 'name="csrfmiddlewaretoken"' in section  # the page's script posts read/ with it
    response = alice.post(url(group, "read/"), {"up_to": received.id})
    assert (response.status_code, response.json()["read"]) == (200, 1)


# --- who has a message ----------------------------------------------------------------------
def test_the_senders_bubble_says_how_far_it_got_and_links_to_who_has_it(alice):
    group = alices_group(alice)
    message = group_messages.send_group_message(sender=alice.user, group=group, text="hello all")
    detail = url(group, f"messages/{message.id}/")
    html = bubble(page(alice, url(group)), message)
    assert f'href="{detail}"' in html
    assert status_text(html) == "delivered to 0 of 2 · read by 0"
    group_messages.acknowledged(
        [Outbox.objects.get(kind="group_message", destination="hq")], now=timezone.now()
    )
    GroupDelivery.objects.filter(username="bob").update(read_at=timezone.now())
    html = bubble(page(alice, url(group)), message)
    assert status_text(html) == "delivered to 1 of 2 · read by 1"


def test_the_message_page_lists_each_recipient_with_their_state(alice):
    group = alices_group(alice)
    message = group_messages.send_group_message(sender=alice.user, group=group, text="hello all")
    group_messages.acknowledged(
        [Outbox.objects.get(kind="group_message", destination="hq")], now=timezone.now()
    )
    html = page(alice, url(group, f"messages/{message.id}/"))
    assert "Delivered to 1 of 2 · read by 0" in html
    assert 'data-state="delivered"' in delivery_row(html, "bob")
    assert 'data-state="waiting"' in delivery_row(html, "rita")
    assert "branch" in delivery_row(html, "rita")
    assert "Retry" not in html


def test_retry_appears_only_for_a_failed_member_and_sends_again(alice):
    group = alices_group(alice)
    message = group_messages.send_group_message(sender=alice.user, group=group, text="hello all")
    row = Outbox.objects.get(kind="group_message", destination="branch")
    Outbox.objects.filter(id=row.id).update(failed_at=timezone.now(), last_error="expired")
    group_messages.refused([row], "expired", now=timezone.now())
    detail = url(group, f"messages/{message.id}/")
    html = page(alice, detail)
    assert "Retry" in delivery_row(html, "rita") and 'data-state="failed"' in delivery_row(
        html, "rita"
    )
    assert "Retry" not in delivery_row(html, "bob")
    assert "1 failed" in status_text(bubble(page(alice, url(group)), message))
    response = alice.post(url(group, f"messages/{message.id}/retry/"), {"username": "rita"})
    assert (response.status_code, response["Location"]) == (302, detail)
    row.refresh_from_db()
    assert row.failed_at is None
    assert GroupDelivery.objects.get(username="rita").error == ""
    html = page(alice, detail)
    assert "Sent again" in html and "Retry" not in html


def test_retry_of_a_member_who_did_not_fail_is_refused_with_a_message(alice):
    group = alices_group(alice)
    message = group_messages.send_group_message(sender=alice.user, group=group, text="hello all")
    response = alice.post(
        url(group, f"messages/{message.id}/retry/"), {"username": "rita"}, follow=True
    )
    assert response.status_code == 200
    assert "Only a failed delivery can be sent again." in response.content.decode()


def test_retry_through_another_groups_address_is_a_404(alice):
    group = alices_group(alice)
    message = group_messages.send_group_message(sender=alice.user, group=group, text="hello all")
    row = Outbox.objects.get(kind="group_message", destination="branch")
    group_messages.refused([row], "expired", now=timezone.now())
    other = alices_group(alice, name="Other")
    response = alice.post(url(other, f"messages/{message.id}/retry/"), {"username": "rita"})
    assert response.status_code == 404
    assert GroupDelivery.objects.get(username="rita").error == "expired"


def test_the_message_page_is_only_for_ones_own_messages(alice):
    group = bobs_group()
    received = received_by_alice(group)
    assert alice.get(url(group, f"messages/{received.id}/")).status_code == 404
    assert alice.get(url(group, "messages/999999/")).status_code == 404


# --- the page's poll --------------------------------------------------------------------------
def test_the_poll_answers_messages_after_the_cursor_with_their_bubbles(alice):
    group = alices_group(alice)
    first = group_messages.send_group_message(sender=alice.user, group=group, text="one")
    second = group_messages.send_group_message(sender=alice.user, group=group, text="two")
    answer = alice.get(url(group, "messages.json?after=0")).json()
    assert [m["id"] for m in answer["messages"]] == [first.id, second.id]
    assert f'id="m-{first.id}"' in answer["messages"][0]["html"]
    assert "delivered to 0 of 2" in answer["messages"][0]["html"]
    later = alice.get(url(group, f"messages.json?after={first.id}")).json()
    assert [m["text"] for m in later["messages"]] == ["two"]


def test_the_polls_status_changes_when_a_delivery_count_changes(alice):
    group = alices_group(alice)
    message = group_messages.send_group_message(sender=alice.user, group=group, text="one")
    poll = url(group, "messages.json?after=0")
    before = alice.get(poll).json()
    group_messages.acknowledged(
        [Outbox.objects.get(kind="group_message", destination="hq")], now=timezone.now()
    )
    after = alice.get(poll).json()
    key = str(message.id)
    assert before["statuses"][key] != after["statuses"][key]
    # The page compares it with the bubble's data-status: equal once drawn again.
    redrawn = alice.get(url(group, f"messages.json?after={message.id}&render={key}")).json()
    assert f'data-status="{after["statuses"][key]}"' in redrawn["rendered"][key]
    assert "delivered to 1 of 2" in redrawn["rendered"][key]


def test_a_received_bubble_names_its_sender(alice):
    group = bobs_group()
    received = received_by_alice(group)
    html = bubble(page(alice, url(group)), received)
    assert '<p class="bubble__sender" dir="auto">Bob</p>' in html


@pytest.mark.parametrize(
    "query", ["after=x", "after=-1", "render=junk", "render=1,x", "render=" + ",".join(["1"] * 101)]
)
def test_a_junk_poll_is_a_400_in_json(alice, query):
    group = alices_group(alice)
    response = alice.get(url(group, f"messages.json?{query}"))
    assert (response.status_code, response.json()["error"]["code"]) == (400, "invalid_field")


def test_the_poll_needs_a_login():
    alice_of_hq()
    group = Group.objects.create(group_id=uuid.uuid4(), home_node="hq", name="x", seq=0, head="")
    response = Client().get(url(group, "messages.json"))
    assert (response.status_code, response.json()["error"]["code"]) == (401, "login_required")


# --- marking read -----------------------------------------------------------------------------
def test_marking_read_queues_a_receipt_to_the_authors_office(alice):
    group = bobs_group()
    received = received_by_alice(group)
    response = alice.post(url(group, "read/"), {"up_to": received.id})
    assert response.status_code == 200
    assert response.json() == {"read": 1, "unread_ids": []}
    received.refresh_from_db()
    assert received.read_at is not None
    assert Outbox.objects.filter(kind="group_read", destination="hq").count() == 1


def test_marking_read_is_post_only_and_answers_json(alice):
    group = alices_group(alice)
    response = alice.get(url(group, "read/"))
    assert response.status_code == 405 and response["Allow"] == "POST"
    assert response.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize("up_to", ["", "x", "-1", "9" * 30])
def test_marking_read_without_a_message_id_is_a_400(alice, up_to):
    group = alices_group(alice)
    response = alice.post(url(group, "read/"), {"up_to": up_to})
    assert (response.status_code, response.json()["error"]["code"]) == (400, "invalid_field")


def test_marking_read_up_to_a_message_of_another_conversation_is_a_404(alice):
    group = bobs_group()
    received = received_by_alice(group)
    other = alices_group(alice, name="Other")
    response = alice.post(url(other, "read/"), {"up_to": received.id})
    assert (response.status_code, response.json()["error"]["code"]) == (404, "unknown_message")
    received.refresh_from_db()
    assert received.read_at is None and not Outbox.objects.filter(kind="group_read").exists()


# --- the home and search ----------------------------------------------------------------------
def test_the_home_lists_a_group_with_its_unread_count(alice):
    group = bobs_group()
    received_by_alice(group, "first")
    received_by_alice(group, "second")
    row = chat_row(page(alice, "/chats/"), group)
    assert "Deal team" in row and f'href="{url(group)}"' in row
    assert 'data-unread="2"' in row
    assert "bob: second" in row


def test_a_group_without_messages_is_listed_on_the_home(alice):
    group = alices_group(alice)
    row = chat_row(page(alice, "/chats/"), group)
    assert "Board" in row and "No messages yet" in row and f'href="{url(group)}"' in row


def test_search_finds_a_group_message_and_opens_it_in_the_group(alice):
    group = bobs_group()
    received = received_by_alice(group, "The quarterly numbers are in")
    html = page(alice, "/search/?q=quarterly")
    link = f'href="{url(group)}?at={received.id}#m-{received.id}"'
    assert link in html and "Deal team" in html
    found = page(alice, f"{url(group)}?at={received.id}")
    assert 'aria-current="true"' in bubble(found, received)
    assert "bubble--found" in bubble(found, received)


def test_the_home_tells_a_former_member_they_left_not_who_is_in_it_now(alice):
    group = bobs_group()
    received_by_alice(group, "before you left")
    assert "3 members" in chat_row(page(alice, "/chats/"), group)
    groups.change_group(author=bob(), group=group, action="remove", usernames=["alice"])
    row = chat_row(page(alice, "/chats/"), group)
    assert "you left" in row and "members" not in row
