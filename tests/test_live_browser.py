"""Pushed live updates in real Chromium across two live offices (uvicorn, Celery workers and
beat, Redis): pages change without a reload because the event stream says so.

While the stream is open the conversation page asks the server only every 30 s for
safety, so a message that shows within a few seconds came through the push."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.helpers import samples
from tests.helpers.browser import launch_chromium
from tests.helpers.chat import people_on, send, send_file, status_of, wait_until_listed
from tests.network import Network, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.browser]

PASSWORD = "a long enough passphrase 42"
PUSHED_S = 8  # well under the 30 s safety poll of an open stream
TIMEOUT_MS = PUSHED_S * 1000


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    with Network(tmp_path_factory.mktemp("live"), nodes=("hq", "branch")) as network:
        network.secrets = people_on(
            network, {"alice": "hq", "bob": "hq", "carol": "branch"}, PASSWORD
        )
        wait_until_listed(network, [("alice", "carol"), ("carol", "alice")])
        yield network


@pytest.fixture(scope="module")
def browser():
    with launch_chromium() as chromium:
        yield chromium


def open_as(browser, net: Network, user: str, path: str) -> Page:
    """user's logged-in session (from the HTTP login) in a new tab at path, with the event
    stream open."""
    base = net.node(net.homes[user]).url
    context = browser.new_context()
    context.add_cookies(
        [{"name": c.name, "value": c.value, "url": base} for c in net.sessions[user].cookies]
    )
    page = context.new_page()
    page.on("dialog", lambda dialog: pytest.fail(f"a dialog opened: {dialog.message}"))
    page.goto(base + path)
    expect(page.locator("body")).to_have_attribute("data-stream", "open", timeout=10_000)
    return page


def test_a_message_shows_in_the_open_conversation_and_the_title_and_ticks_follow(browser, net):
    carol = open_as(browser, net, "carol", "/chat/alice/")
    users = open_as(browser, net, "carol", "/users/")
    text = "pushed to carol's open page"

    send(net, "alice", "carol", text)

    expect(carol.locator(".bubble--in .bubble__text", has_text=text)).to_be_visible(
        timeout=TIMEOUT_MS
    )
    # the tab that shows it marks it read; the users tab counted it before that, or not
    wait_for(
        lambda: status_of(net, "alice", "carol", text) == "read",
        timeout=30,
        message="alice sees read once carol's page showed it",
    )
    expect(users.locator("tr[data-username='alice'] .unread-badge")).to_have_count(0)
    carol.context.close()

    # with the conversation closed, the next one stays unread: the title and badge say so
    send(net, "alice", "carol", "while the conversation is closed")
    expect(users.locator("tr[data-username='alice'] .unread-badge")).to_have_text(
        "1", timeout=TIMEOUT_MS
    )
    assert users.title().startswith("(1) ")
    users.context.close()


def test_a_person_logging_in_on_the_other_office_shows_online_without_reload(browser, net):
    secret = net.create_person("branch", "dave", PASSWORD)
    wait_until_listed(net, [("bob", "dave")])
    bob = open_as(browser, net, "bob", "/users/")
    row = bob.locator("tr[data-username='dave']")
    expect(row).to_have_attribute("data-status", "offline", timeout=20_000)

    dave = net.login("branch", "dave", PASSWORD, secret)

    expect(row).to_have_attribute("data-status", "online", timeout=20_000)
    dave.post(
        net.node("branch").url + "/logout/",
        data={"csrfmiddlewaretoken": dave.cookies.get("csrftoken")},
        headers={"Referer": net.node("branch").url + "/users/"},
        timeout=10,
    )
    expect(row).to_have_attribute("data-status", "offline", timeout=20_000)
    bob.context.close()


def test_a_message_sent_while_the_stream_was_cut_shows_after_it_reconnects(browser, net):
    carol = open_as(browser, net, "carol", "/chat/alice/")
    branch = net.node("branch")
    branch.stop_web()  # carol's stream is cut; her page cannot ask the server either
    text = "sent while carol's office was unreachable"
    try:
        send(net, "alice", "carol", text)
        expect(carol.locator("body")).not_to_have_attribute("data-stream", "open")
    finally:
        branch.start_web()

    expect(carol.locator(".bubble--in .bubble__text", has_text=text)).to_be_visible(timeout=30_000)
    carol.context.close()


BACKGROUND_TAB_WITH_NOTIFICATIONS = """
window.__notifications = [];
window.Notification = function (title, options) {
  window.__notifications.push({ title: title, body: (options || {}).body || "" });
};
window.Notification.permission = "granted";
window.Notification.requestPermission = function () { return Promise.resolve("granted"); };
Object.defineProperty(document, "visibilityState", { get: function () { return "hidden"; } });
"""


def test_a_background_tab_notifies_a_new_message_without_its_text(browser, net):
    """The browser's Notification (outside the project) is recorded, not shown: the test
    sees what the page asked it to show while the tab was in the background."""
    base = net.node("branch").url
    context = browser.new_context()
    context.add_cookies(
        [{"name": c.name, "value": c.value, "url": base} for c in net.sessions["carol"].cookies]
    )
    context.add_init_script(BACKGROUND_TAB_WITH_NOTIFICATIONS)
    page = context.new_page()
    page.goto(base + "/users/")
    expect(page.locator("body")).to_have_attribute("data-stream", "open", timeout=10_000)
    # the first unread count is in: only a rise from it notifies
    expect(page.locator("body")).to_have_attribute("data-unread", re.compile(r"\d+"))

    send(net, "alice", "carol", "the merger closes on Friday")

    page.wait_for_function("() => window.__notifications.length > 0", timeout=TIMEOUT_MS)
    notes = page.evaluate("window.__notifications")
    assert notes == [{"title": "New message", "body": "From alice"}]
    context.close()


def test_the_conversations_home_counts_a_new_message_without_reload(browser, net):
    home = open_as(browser, net, "carol", "/chats/")
    row = home.locator("li[data-peer='alice']")

    send(net, "alice", "carol", "for the home page")

    expect(row.locator(".chat-row__last")).to_contain_text("for the home page", timeout=TIMEOUT_MS)
    expect(row).not_to_have_attribute("data-unread", "0")
    assert home.title().startswith("(")
    home.context.close()


FILE_PAYLOAD = "<img src=x onerror=alert(4)>"
PAYLOADS = (
    '<img src=x onerror="alert(1)">',
    "<script>alert(2)</script>",
    '"><svg onload=alert(3)>',
)


def test_hostile_text_in_messages_profiles_and_file_names_is_shown_as_text(browser, net):
    """Every page that shows what someone else wrote: a dialog fails the test (open_as),
    and the payloads must appear as the characters they are."""
    payload = " ".join(PAYLOADS)
    secret = net.create_person(
        "hq", "mallory", PASSWORD, full_name=payload, location=payload, description=payload
    )
    net.sessions["mallory"] = net.login("hq", "mallory", PASSWORD, secret)
    net.homes["mallory"] = "hq"
    wait_until_listed(net, [("carol", "mallory")])
    send(net, "mallory", "carol", payload)
    # no quotes in the name: a multipart file name carries them as %22
    send_file(net, "mallory", "carol", f"{FILE_PAYLOAD}.png", samples.png())

    conversation = open_as(browser, net, "carol", "/chat/mallory/")
    expect(conversation.locator(".bubble__text", has_text=PAYLOADS[1])).to_be_visible()
    expect(conversation.locator(".attachment", has_text=FILE_PAYLOAD)).to_be_visible(timeout=30_000)
    home = open_as(browser, net, "carol", "/chats/")
    expect(home.locator("li[data-peer='mallory']")).to_contain_text(PAYLOADS[2])
    profile = open_as(browser, net, "carol", "/people/mallory/")
    expect(profile.locator("body")).to_contain_text(PAYLOADS[1])
    for page in (conversation, home, profile):
        assert page.evaluate("document.querySelectorAll('svg[onload], img[onerror]').length") == 0
        page.context.close()
