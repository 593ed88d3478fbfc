"""Screenshots of the main pages at desktop and phone width, in real Chromium against two
live offices with people, profiles, messages and a picture, written as test artifacts to
look at: test-artifacts/screenshots/<page>-<width>.png (P2P_TEST_ARTIFACTS moves the folder).

Each page must load (its status and heading) and fit the width: nothing may scroll
sideways on a phone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.helpers import samples
from tests.helpers.browser import launch_chromium
from tests.helpers.chat import file_state, send, send_file, status_of, wait_until_listed
from tests.helpers.groups import create_group, group_poll, group_send, group_texts
from tests.network import Network, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.browser]

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "a long enough passphrase 42"
VIEWPORTS = {1280: {"width": 1280, "height": 800}, 390: {"width": 390, "height": 844}}
WAIT_MS = 15_000

PEOPLE = {
    "alice": {
        "node": "hq",
        "full_name": "Alice Martin",
        "position": "Chief Executive Officer",
        "location": "Paris, 8th floor",
        "description": "Runs the company. Prefers short messages; calls after 18:00 only "
        "when it cannot wait until the morning.",
        "picture": (samples.png, {"size": (320, 320)}),
    },
    "bob": {"node": "hq", "full_name": "Bob Okafor", "position": "Chief Financial Officer"},
    "carol": {
        "node": "branch",
        "full_name": "Carol Nguyen-Lefebvre",
        "position": "Head of Operations, Asia-Pacific and Middle East",
        "location": "Singapore, Marina Bay Financial Centre Tower 3",
        "description": "Operations for eleven offices.\nAsk me about logistics, leases and "
        "the quarterly site reviews.",
        "picture": (samples.jpeg, {"size": (400, 300)}),
    },
    "dave": {"node": "branch", "full_name": "Dávid Kovács", "position": "General Counsel"},
}
LONG_WORD = "https://intranet.example/contracts/2025/q3/supplier-framework-agreement-v7-final.pdf"
LAST_TO_CAROL = "Looks good. Let's talk on Thursday."
GROUP_NAME = "Board of Directors — Q3 review & <planning>"
TO_THE_BOARD = "The board pack is in the data room; comments by Friday please."

# name: (who is logged in, path, the page's heading); the code page is reached by the
# password step in the browser itself.
PAGES = {
    "login": (None, "/login/", "Log in"),
    "code": (None, "/login/", "Enter your code"),
    "conversations": ("alice", "/chats/", "Conversations"),
    "users": ("alice", "/users/", "Users"),
    "conversation": ("alice", "/chat/carol/", "Carol Nguyen-Lefebvre"),
    "profile": ("alice", "/people/carol/", "Carol Nguyen-Lefebvre"),
    "own-profile": ("alice", "/profile/", "Your profile"),
    "search": ("alice", "/search/?q=contract%20draft", "Search your messages"),
    "new-group": ("alice", "/groups/new/", "New group"),
    "group": ("alice", "/groups/{group}/", GROUP_NAME),
    "group-message": ("alice", "/groups/{group}/messages/{message}/", "Your message"),
}


def artifacts_dir() -> Path:
    """Where browser tests leave files to look at: P2P_TEST_ARTIFACTS or test-artifacts/."""
    return Path(os.environ.get("P2P_TEST_ARTIFACTS") or ROOT / "test-artifacts")


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    root = tmp_path_factory.mktemp("screenshots")
    with Network(root, nodes=("hq", "branch")) as network:
        secrets = {}
        for user, person in PEOPLE.items():
            profile = {k: v for k, v in person.items() if k not in ("node", "picture")}
            if "picture" in person:
                make, options = person["picture"]
                picture = root / f"{user}-picture"
                picture.write_bytes(make(**options))
                profile["picture"] = picture
            secrets[user] = network.create_person(person["node"], user, PASSWORD, **profile)
        network.homes = {user: person["node"] for user, person in PEOPLE.items()}
        network.sessions = {
            user: network.login(PEOPLE[user]["node"], user, PASSWORD, secrets[user])
            for user in ("alice", "bob", "carol")
        }
        wait_until_listed(network, [("alice", "carol"), ("carol", "alice"), ("alice", "dave")])
        send(network, "carol", "alice", "Morning! Here are the photos from the site visit.")
        photo = send_file(
            network,
            "carol",
            "alice",
            "north-entrance.jpg",
            samples.jpeg(size=(1200, 800)),
            caption="North entrance, after the works",
        )
        send(network, "alice", "carol", f"Thanks. The contract draft is at {LONG_WORD}")
        send(network, "alice", "carol", LAST_TO_CAROL)
        send(network, "bob", "alice", "The board pack is ready for your review.")
        wait_for(
            lambda: file_state(network, "alice", "carol", photo["file"]["id"]) == "stored",
            timeout=60,
            message="hq holds carol's photo",
        )
        wait_for(
            lambda: status_of(network, "alice", "carol", LAST_TO_CAROL) == "delivered",
            timeout=30,
            message="alice's messages reach carol",
        )
        network.group = create_group(network, "alice", GROUP_NAME, ["bob", "carol", "dave"])
        wait_for(
            lambda: group_poll(network, "carol", network.group) is not None,
            timeout=60,
            message="branch knows the group",
        )
        group_send(network, "alice", network.group, TO_THE_BOARD)
        group_send(network, "carol", network.group, "Thanks. I will read it on the flight.")
        wait_for(
            lambda: (
                "Thanks. I will read it on the flight."
                in group_texts(network, "alice", network.group)
            ),
            timeout=60,
            message="carol's group message reaches alice",
        )
        network.group_message = next(
            m["id"]
            for m in group_poll(network, "alice", network.group)["messages"]
            if m["text"] == TO_THE_BOARD
        )
        yield network


@pytest.fixture(scope="module")
def browser():
    with launch_chromium() as chromium:
        yield chromium


def open_page(browser, net: Network, name: str, width: int) -> Page:
    """The page called name in a new tab of the given width, loaded and settled."""
    user, path, _ = PAGES[name]
    path = path.format(group=getattr(net, "group", ""), message=getattr(net, "group_message", ""))
    base = net.node("hq").url
    context = browser.new_context(
        viewport=VIEWPORTS[width], is_mobile=width < 600, has_touch=width < 600
    )
    if user:
        context.add_cookies(
            [{"name": c.name, "value": c.value, "url": base} for c in net.sessions[user].cookies]
        )
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    response = page.goto(base + path)
    assert response is not None and response.status == 200, f"{path}: {response}"
    if name == "code":
        page.fill("#id_username", "bob")
        page.fill("#id_password", PASSWORD)
        page.click("main button[type=submit]")
        page.wait_for_url("**/login/code/")
    if user:
        expect(page.locator("body")).to_have_attribute("data-stream", "open", timeout=WAIT_MS)
    for image in page.locator("main img").all():  # lazy ones load once scrolled to
        image.scroll_into_view_if_needed()
        expect(image).to_have_js_property("complete", True, timeout=WAIT_MS)
        assert image.evaluate("i => i.naturalWidth") > 0, f"a broken picture on {path}"
    page.evaluate("window.scrollTo(0, 0)")
    return page


SHOTS = [(name, width) for name in PAGES for width in VIEWPORTS]


@pytest.mark.parametrize(("name", "width"), SHOTS, ids=[f"{n}-{w}" for n, w in SHOTS])
def test_each_main_page_is_captured_and_fits_its_width(browser, net, name, width):
    page = open_page(browser, net, name, width)
    try:
        folder = artifacts_dir() / "screenshots"
        folder.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=folder / f"{name}-{width}.png", full_page=True)

        expect(page.locator("main h1").first).to_have_text(PAGES[name][2])
        overflow = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert overflow[0] <= overflow[1], f"{name} scrolls sideways at {width}px: {overflow}"
        if name == "conversation":
            expect(page.locator(".bubble--in .attachment__image")).to_have_js_property(
                "naturalWidth", 1200
            )
    finally:
        page.context.close()
