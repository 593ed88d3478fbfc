"""Read receipts in real Chromium: a message turns read for its sender only once the
reader's page has shown it on screen."""

from __future__ import annotations

import time

import pytest
from django.utils import timezone

from messaging import delivery, sending
from messaging.models import Message
from tests.helpers.browser import launch_chromium
from tests.helpers.factories import DEFAULT_PASSWORD, code_at_step, make_person
from tests.helpers.messaging import join_local_node, make_local_person, stored_message
from tests.helpers.wait import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def page(live_server):
    with launch_chromium() as browser:
        context = browser.new_context(
            base_url=live_server.url, viewport={"width": 800, "height": 500}
        )
        page = context.new_page()
        page.csp_violations = []
        page.on(
            "console",
            lambda message: (
                "Content Security Policy" in message.text
                and page.csp_violations.append(message.text)
            ),
        )
        yield page
        context.close()


def log_in(page, username: str, secret: str) -> None:
    page.goto("/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", DEFAULT_PASSWORD)
    page.click("button[type=submit]:has-text('Continue')")
    page.wait_for_url("**/login/code/")
    page.fill("#id_code", code_at_step(secret, int(time.time() // 30)))
    page.click("main button[type=submit]")
    page.wait_for_url(lambda url: "/login/" not in url)


def status_for_sender(message: Message) -> str:
    """What the sender's page shows: delivery runs (same node) until nothing is due."""
    delivery.deliver_pending(node="hq")
    message.refresh_from_db()
    return message.status


def test_a_message_turns_read_only_once_the_page_has_shown_it(page):
    join_local_node("hq")
    alice, secret = make_person("alice")
    bob = make_local_person("bob")
    for n in range(30):  # a conversation longer than the window, all read
        stored_message(
            alice,
            "bob",
            direction="in",
            text=f"earlier {n}\n" * 3,
            created_ms=n + 1,
            status="read",
            read_at=timezone.now(),
        )
    log_in(page, "alice", secret)
    page.goto("/chat/bob/")
    page.evaluate("window.scrollTo(0, 0)")  # alice reads old messages, at the top

    sent = sending.send_message(sender=bob, recipient_username="alice", text="are you there?")
    assert status_for_sender(sent) == "delivered"
    bubble = page.locator("#messages li", has_text="are you there?")
    bubble.wait_for(state="attached", timeout=15_000)  # the poll appended it, out of view
    for _ in range(2):  # two more polls: time for a wrong script to mark it read
        with page.expect_response(lambda r: "messages.json" in r.url, timeout=10_000):
            pass
    assert status_for_sender(sent) == "delivered"
    assert bubble.get_attribute("data-unread") == "1"

    bubble.scroll_into_view_if_needed()
    wait_for(lambda: status_for_sender(sent) == "read", timeout=15, message="bob sees read")
    assert Message.objects.get(owner=alice, envelope_id=sent.envelope_id).read_at is not None
    assert bubble.get_attribute("data-unread") is None
    assert page.csp_violations == []
