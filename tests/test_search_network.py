"""Search across two live offices (uvicorn, Celery workers and beat, Redis; SQLite files,
or PostgreSQL in bin/test's second pass): each person finds their own messages, sent and
received, by words, prefixes, phrases, accents and file names, and nobody else's; hostile
queries are answered; in Chromium a typed word finds a message and its result opens the
conversation at it."""

from __future__ import annotations

import html
import re

import pytest
from playwright.sync_api import expect

from tests.helpers import samples
from tests.helpers.browser import launch_chromium
from tests.helpers.chat import file_state, people_on, send, send_file, texts, url, wait_until_listed
from tests.network import Network, wait_for

pytestmark = pytest.mark.integration

PASSWORD = "a long enough passphrase 42"
HIT = re.compile(r'<li class="search-hit" data-id="(\d+)">')


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    with Network(tmp_path_factory.mktemp("search"), nodes=("hq", "branch")) as network:
        network.secrets = people_on(
            network, {"alice": "hq", "bob": "hq", "carol": "branch", "dave": "branch"}, PASSWORD
        )
        wait_until_listed(network, [("alice", "carol"), ("carol", "alice"), ("bob", "dave")])
        yield network


def found(net: Network, user: str, q: str, **params: str) -> dict:
    """What user's search page answers for q, as its script asks (?rows=1)."""
    response = net.sessions[user].get(
        url(net, user, "/search/"), params={"q": q, "rows": "1", **params}, timeout=10
    )
    assert response.status_code == 200, response.text[:300]
    return response.json()


def plain(markup: str) -> str:
    """The text a person reads in some HTML."""
    return html.unescape(re.sub(r"<[^>]+>", "", markup))


def arrived(net: Network, user: str, peer: str, text: str) -> None:
    wait_for(
        lambda: text in texts(net, user, peer, "in"),
        timeout=30,
        message=f"{user} received {text!r}",
    )


@pytest.fixture(scope="module")
def history(net):
    """alice (hq) and carol (branch) talk, bob and dave (each on one office) too, with the
    same words, so that whose rows a search returns tells."""
    lines = {
        ("alice", "carol"): [
            "The quarterly figures are ready",
            "Réunion à Genève jeudi",
            "مرحبا كارول، الاجتماع غدا",
            "שלום קרול, הפגישה מחר",
            "Launch 🚀 party on Friday 🎉",
            "شكرًا على المساعدة",
            "תּוֹדָה רַבָּה לכולם",
            "Treffen in der Goethestraße",
            "दुनिया बहुत बड़ी है",
            "من می\u200cخواهم بیایم",  # noqa: RUF001
            "Spotkanie w Łodzi, potem Ørsted",
        ],
        ("bob", "dave"): ["bob's quarterly figures, not alice's", "Genève for bob"],
    }
    for (user, peer), texts_ in lines.items():
        for text in texts_:
            send(net, user, peer, text)
        arrived(net, peer, user, texts_[-1])
    message = send_file(
        net, "alice", "carol", "Budget-forecast_2027.v2.pdf", samples.pdf(), "the deck for Monday"
    )
    wait_for(
        lambda: file_state(net, "carol", "alice", message["file"]["id"]) == "stored",
        timeout=60,
        message="carol's office holds alice's file",
    )
    return lines


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("quarterly", "The quarterly figures are ready"),
        ("QUARTERLY figures", "The quarterly figures are ready"),
        ("quart", "The quarterly figures are ready"),  # the last word as typed: a prefix
        ('"figures are ready"', "The quarterly figures are ready"),
        ("reunion geneve", "Réunion à Genève jeudi"),  # accents either way
        ("GENÈVE", "Réunion à Genève jeudi"),
        ("الاجتماع", "مرحبا كارول، الاجتماع غدا"),
        ("הפגישה", "שלום קרול, הפגישה מחר"),
        ("party friday", "Launch 🚀 party on Friday 🎉"),
        ("شكرا", "شكرًا على المساعدة"),  # vowel marks or none
        ("المُساعدة", "شكرًا على المساعدة"),
        ("תודה", "תּוֹדָה רַבָּה לכולם"),
        ("goethestrasse", "Treffen in der Goethestraße"),
        ("दुनिया", "दुनिया बहुत बड़ी है"),
        ("forecast", "the deck for Monday"),  # the file's name
        ("2027", "the deck for Monday"),  # a word between punctuation in it
        ("v2 pdf", "the deck for Monday"),
        ("می\u200cخواهم", "من می\u200cخواهم بیایم"),  # noqa: RUF001 - with a zero-width non-joiner
        ("میخواهم", "من می\u200cخواهم بیایم"),  # noqa: RUF001 - or without
        ("lodzi orsted", "Spotkanie w Łodzi, potem Ørsted"),
        ("“figures are ready”", "The quarterly figures are ready"),  # curly quotes
        ("deck monday", "the deck for Monday"),  # its caption
    ],
)
def test_both_people_find_their_message_on_their_own_office(net, history, q, expected):
    for user in ("alice", "carol"):  # sent on hq, received on branch
        answer = found(net, user, q)
        assert answer["count"] == 1, (user, q, answer["html"][:500])
        assert "<mark>" in answer["html"]
        ids = HIT.findall(answer["html"])
        page = net.sessions[user].get(
            url(net, user, f"/chat/{'carol' if user == 'alice' else 'alice'}/"),
            params={"at": ids[0]},
            timeout=10,
        )
        assert page.status_code == 200
        found_bubble = re.search(
            r'<li class="bubble [^"]*bubble--found" id="m-' + ids[0] + r'".*?</li>', page.text, re.S
        )
        assert found_bubble and expected in plain(found_bubble.group(0))


def test_a_phrase_in_the_wrong_order_and_a_word_nobody_wrote_find_nothing(net, history):
    assert found(net, "alice", '"ready are figures"')["count"] == 0
    assert found(net, "carol", "quarterly missing")["count"] == 0
    assert found(net, "alice", "दिन")["count"] == 0  # "day": not the letters of "world"


def test_nobody_finds_another_persons_messages_on_either_office(net, history):
    # bob shares alice's office and dave carol's; each finds only his own "quarterly"
    for user, own in (("bob", "bob's quarterly figures"), ("dave", "bob's quarterly figures")):
        answer = found(net, user, "quarterly")
        assert answer["count"] == 1, answer["html"][:500]
        assert own in plain(answer["html"])
        assert "The quarterly figures are ready" not in plain(answer["html"])
    assert found(net, "bob", "forecast")["count"] == 0
    assert found(net, "dave", "reunion")["count"] == 0
    # in one conversation only: alice's "genève" with carol, not bob's with dave
    assert found(net, "alice", "geneve", **{"with": "carol"})["count"] == 1
    assert found(net, "alice", "geneve", **{"with": "bob"})["count"] == 0


@pytest.mark.parametrize(
    "q",
    [
        "NEAR(quarterly figures)",
        "quarterly OR anything",
        "text:quarterly",
        '"unclosed',
        '""""',
        "quarterly*^-+",
        "'; DROP TABLE messaging_message; --",
        "a\x00b",
        "\\\\' & | ! <-> :*",
        "x" * 10_000,
    ],
)
def test_hostile_queries_are_answered_and_reach_no_one_elses_rows(net, history, q):
    answer = found(net, "bob", q)
    assert "The quarterly figures are ready" not in plain(answer["html"])
    page = net.sessions["bob"].get(url(net, "bob", "/search/"), params={"q": q}, timeout=10)
    assert page.status_code == 200
    assert "Search your messages" in page.text


@pytest.mark.browser
def test_typing_a_word_finds_the_message_and_its_result_opens_the_conversation(net, history):
    with launch_chromium() as chromium:
        context = chromium.new_context()
        base = net.node("branch").url
        context.add_cookies(
            [{"name": c.name, "value": c.value, "url": base} for c in net.sessions["carol"].cookies]
        )
        page = context.new_page()
        page.on("dialog", lambda dialog: pytest.fail(f"a dialog opened: {dialog.message}"))
        page.goto(base + "/chats/")
        page.get_by_placeholder("Search messages and files").fill("genève")
        page.get_by_role("button", name="Search").click()
        results = page.locator("#search-results .search-hit")
        expect(results).to_have_count(1)
        expect(results.first.locator("mark")).to_have_text("Genève")

        # searching as one types: the last word is a prefix, the list follows each change
        box = page.get_by_role("searchbox")
        box.fill("")
        box.press_sequentially("quar", delay=30)
        expect(results).to_have_count(1)
        expect(results.first.locator("mark")).to_have_text("quarterly")
        expect(page).to_have_url(re.compile(r"[?&]q=quar"))
        box.press_sequentially("zzz", delay=30)
        expect(page.locator("#search-status")).to_have_text("No messages match.")
        box.fill("quarterly")
        expect(results.first.locator("mark")).to_have_text("quarterly")

        results.first.click()
        found_bubble = page.locator(".bubble--found")
        expect(found_bubble).to_contain_text("The quarterly figures are ready")
        expect(found_bubble).to_be_in_viewport()
        page.get_by_role("link", name="Latest messages").click()
        expect(page.locator(".bubble").last).to_contain_text("the deck for Monday")
        expect(page.locator(".bubble--found")).to_have_count(0)
        context.close()
