"""Searching one's own messages (/search/, its rows for the page's script with ?rows=1,
messaging.search.search_messages) and opening a result in its conversation (?at=), as a
logged-in person sees them; the index the database triggers keep; no search term logged."""

from __future__ import annotations

import logging
import re
import uuid

import pytest
from django.db import connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.test import Client, RequestFactory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accounts.models import User
from messaging import search
from messaging.models import Attachment, Message
from messaging.queries import AROUND
from p2psocial.logging import StructuredFormatter
from peers import protocol
from tests.helpers.messaging import (
    alice_of_hq,
    make_local_person,
    stored_message,
    with_file,
)

pytestmark = pytest.mark.django_db

HIT = re.compile(r'<li class="search-hit" data-id="(\d+)"')
BUBBLE = re.compile(r'<li class="bubble bubble--(?:in|out)( bubble--found)?" id="m-(\d+)"')
NOT_IN_CONVERSATION = "That message is not in this conversation."
NO_SUCH_SEARCH = "That search does not exist."


@pytest.fixture(autouse=True)
def fast_hashing(settings):
    """Argon2 costs most of a login; these tests are about what the pages show."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def alice():
    """alice of hq, logged in; rita of branch and bob of hq to talk to; a fresh directory."""
    return alice_of_hq()


def received(owner, peer: str, text: str = "hello", *, at: int = 1_000) -> Message:
    return stored_message(owner, peer, direction="in", text=text, created_ms=at)


def sent(owner, peer: str, text: str = "hello", *, at: int = 1_000) -> Message:
    return stored_message(owner, peer, direction="out", text=text, created_ms=at)


def page_of(client: Client, q: str, **params: str) -> str:
    """The search page's HTML for q; it must answer 200."""
    response = client.get("/search/", {"q": q, **params})
    assert response.status_code == 200, response.content[:500]
    return response.content.decode()


def rows_of(client: Client, q: str, **params: str) -> dict:
    """The ?rows=1 answer for q (JSON); it must answer 200."""
    response = client.get("/search/", {"q": q, "rows": "1", **params})
    assert response.status_code == 200, response.content[:500]
    assert response["Content-Type"].startswith("application/json")
    return response.json()


def hits(html: str) -> list[int]:
    """The ids of the messages found, in the order shown."""
    return [int(i) for i in HIT.findall(html)]


def found(client: Client, q: str, **params: str) -> list[int]:
    """What the page finds for q, checked to be what ?rows=1 finds too."""
    on_page = hits(page_of(client, q, **params))
    rows = rows_of(client, q, **params)
    assert hits(rows["html"]) == on_page and rows["count"] == len(on_page)
    return on_page


def hit_html(html: str, message_id: int) -> str:
    match = re.search(rf'<li class="search-hit" data-id="{message_id}".*?</li>', html, re.S)
    assert match, f"no hit for message {message_id}"
    return match.group(0)


# --- 1. matching ---------------------------------------------------------------------------
def test_it_finds_a_word_in_received_and_sent_messages(alice):
    """A word is found in messages one received and in messages one sent, newest first."""
    got = received(alice.user, "rita", "The budget is ready", at=1_000)
    gave = sent(alice.user, "bob", "I approved the budget.", at=2_000)
    received(alice.user, "rita", "Nothing to see here", at=3_000)

    assert found(alice, "budget") == [gave.id, got.id]


def test_it_finds_a_file_by_its_name(alice):
    """A file without caption is found by a word of its name, shown with the 📎 mark."""
    message = with_file(received(alice.user, "rita", ""), "quarterly-figures.pdf")
    received(alice.user, "rita", "unrelated")

    html = page_of(alice, "figures")
    assert hits(html) == [message.id]
    hit = hit_html(html, message.id)
    assert "File: " in hit and "<mark>figures</mark>" in hit


def test_it_finds_a_file_by_its_caption(alice):
    """A file's caption is searched like any message text."""
    message = with_file(received(alice.user, "rita", "signed contract attached"), "scan.pdf")

    assert found(alice, "contract") == [message.id]


def test_it_ignores_case(alice):
    """Upper and lower case are the same, in the query and in the message."""
    message = received(alice.user, "rita", "Meeting with the BOARD on Monday")

    assert found(alice, "board") == [message.id]
    assert found(alice, "bOaRd mEEting") == [message.id]


# --- 2. prefix -----------------------------------------------------------------------------
def test_the_last_word_matches_as_a_prefix(alice):
    """What one is still typing ("budg") finds the words it begins ("budget")."""
    message = received(alice.user, "rita", "The budget is ready")

    assert found(alice, "budg") == [message.id]
    assert "<mark>budget</mark>" in page_of(alice, "budg")


def test_a_word_followed_by_a_space_is_not_a_prefix(alice):
    """Once a space follows it, the word is whole: "budg " does not find "budget"."""
    received(alice.user, "rita", "The budget is ready")

    assert found(alice, "budg ") == []


def test_a_word_in_quotes_is_not_a_prefix(alice):
    """A quoted word matches only itself: '"budg"' does not find "budget"."""
    received(alice.user, "rita", "The budget is ready")

    assert found(alice, '"budg"') == []
    assert found(alice, '"budg') == []


def test_only_the_last_word_is_a_prefix(alice):
    """An earlier word must match whole: "budg ready" finds nothing, "budget rea" finds."""
    message = received(alice.user, "rita", "The budget is ready")

    assert found(alice, "budg ready") == []
    assert found(alice, "budget rea") == [message.id]


# --- 3. phrases ----------------------------------------------------------------------------
def test_a_quoted_phrase_matches_adjacent_words_in_order(alice):
    """'"la reunion"' finds the words side by side, not apart; unquoted finds both."""
    adjacent = received(alice.user, "rita", "On se voit à la reunion demain", at=1_000)
    apart = received(alice.user, "rita", "la salle de reunion est prise", at=2_000)

    assert found(alice, '"la reunion"') == [adjacent.id]
    assert found(alice, "la reunion") == [apart.id, adjacent.id]


def test_a_phrase_in_the_wrong_order_does_not_match(alice):
    """'"reunion la"' does not find "la reunion"."""
    received(alice.user, "rita", "On se voit à la reunion demain")

    assert found(alice, '"reunion la"') == []


def test_an_unclosed_quote_runs_to_the_end(alice):
    """'"la reunion' (no closing quote) is the phrase "la reunion"."""
    adjacent = received(alice.user, "rita", "On se voit à la reunion demain", at=1_000)
    received(alice.user, "rita", "la salle de reunion est prise", at=2_000)

    assert found(alice, '"la reunion') == [adjacent.id]


# --- 4. accents, scripts, emoji ------------------------------------------------------------
def test_a_query_without_accents_finds_accented_words(alice):
    """A query without accents finds accented words: "cafe" finds "café"."""
    message = received(alice.user, "rita", "Un café après la réunion ?")

    assert found(alice, "cafe") == [message.id]
    assert found(alice, "reunion") == [message.id]
    assert "<mark>café</mark>" in page_of(alice, "cafe")


def test_an_accented_query_finds_words_without_accents(alice):
    """An accented query finds words without accents: "CAFÉ" finds "cafe"."""
    message = received(alice.user, "rita", "coffee at the cafe downstairs")

    assert found(alice, "CAFÉ") == [message.id]


def test_decomposed_accents_match_composed_ones(alice):
    """A message written with combining accents (e + U+0301) is found by "café" and "cafe"."""
    message = received(alice.user, "rita", "le cafe\u0301 du coin")

    assert found(alice, "café") == [message.id]
    assert found(alice, "cafe") == [message.id]


@pytest.mark.parametrize(
    ("text", "query"),
    [
        ("مرحبا بالعالم، نلتقي غدا", "بالعالم"),
        ("שלום עולם, נפגש מחר", "עולם"),
        ("Projet מסמך final", "מסמך"),
    ],
    ids=["arabic", "hebrew", "hebrew-among-latin"],
)
def test_right_to_left_words_are_found(alice, text, query):
    """Arabic and Hebrew words, alone or among Latin ones, are found and marked."""
    message = received(alice.user, "rita", text)

    assert found(alice, query) == [message.id]
    assert f"<mark>{query}</mark>" in page_of(alice, query)


@pytest.mark.parametrize(
    ("text", "query"),
    [
        ("شكرًا على المساعدة", "شكرا"),  # tanween fatha, as "thanks" is usually written
        ("شكرا على المساعدة", "شكرًا"),
        ("שָׁלוֹם לכולם", "שלום"),  # niqqud
    ],
    ids=["arabic-marks-in-text", "arabic-marks-in-query", "hebrew-niqqud-in-text"],
)
def test_arabic_and_hebrew_vowel_marks_are_ignored_both_ways(alice, text, query):
    """Vowel marks are accents too: a word is found with or without them (as fold() says)."""
    message = received(alice.user, "rita", text)

    assert found(alice, query) == [message.id]


def test_a_devanagari_word_does_not_find_a_different_word(alice):
    """A Devanagari word finds only itself: "दिन" (day) not "दुनिया" (world), though both
    have the consonants द and न, their vowel signs between and after them."""
    world = received(alice.user, "rita", "दुनिया बहुत बड़ी है", at=1_000)
    day = received(alice.user, "rita", "आज का दिन अच्छा है", at=2_000)

    assert found(alice, "दुनिया") == [world.id]
    assert found(alice, "दिन") == [day.id]
    assert "<mark>" in hit_html(page_of(alice, "दिन"), day.id)


def test_sharp_s_and_ss_are_the_same(alice):
    """ß is ss, as fold() says both engines compare it: "strasse" finds "Straße"."""
    message = received(alice.user, "rita", "Treffen in der Goethestraße um neun")

    assert found(alice, "goethestraße") == [message.id]
    assert found(alice, "Goethestrasse") == [message.id]


def test_a_word_between_emoji_is_found(alice):
    """Emoji around a word (even touching it) do not hide it."""
    message = received(alice.user, "rita", "🎉🎉launch🚀 tomorrow 👍🏽")

    assert found(alice, "launch") == [message.id]
    assert found(alice, "🚀launch🎉") == [message.id]


@pytest.mark.parametrize("query", ["🎉", "🎉🚀 👍🏽", "!!! ... ???", "-- ++ ** ^^", "  ", "'"])
def test_a_query_of_only_emoji_or_punctuation_finds_nothing(alice, query):
    """Punctuation and emoji alone are no words: nothing is found, the page says why."""
    received(alice.user, "rita", "🎉 !!! ... ??? 🚀 -- ++ ** ^^ ' 👍🏽")

    assert found(alice, query) == []
    html = page_of(alice, query)
    if query.strip():
        assert "punctuation and emoji alone find nothing" in html


# --- 5. ownership --------------------------------------------------------------------------
def test_other_peoples_messages_are_never_found(alice):
    """bob's and eve's copies of messages with the word stay theirs, on the page and rows."""
    eve = make_local_person("eve")
    bob = User.objects.get(username="bob")
    mine = received(alice.user, "bob", "the zanzibar plan", at=1_000)
    sent(bob, "alice", "the zanzibar plan", at=1_000)  # bob's own copy of it
    received(eve, "rita", "zanzibar zanzibar", at=2_000)
    sent(bob, "rita", "zanzibar again", at=3_000)

    assert found(alice, "zanzibar") == [mine.id]
    assert found(alice, "zanz") == [mine.id]
    assert found(alice, "zanzibar", **{"with": "rita"}) == []


def test_with_narrows_to_one_conversation(alice):
    """?with=rita finds only the conversation with rita; the heading says so."""
    with_rita = received(alice.user, "rita", "agenda for friday", at=1_000)
    sent(alice.user, "bob", "agenda for friday", at=2_000)

    assert found(alice, "agenda", **{"with": "rita"}) == [with_rita.id]
    assert len(found(alice, "agenda")) == 2
    html = page_of(alice, "agenda", **{"with": "rita"})
    assert "Search your conversation with Rita" in html
    assert '<input type="hidden" name="with" value="rita">' in html


def test_a_results_link_opens_its_conversation_at_the_message(alice):
    """Each hit links to /chat/<peer>/?at=<id>#m-<id>."""
    message = received(alice.user, "rita", "the budget is ready")

    assert f'href="/chat/rita/?at={message.id}#m-{message.id}"' in page_of(alice, "budget")


# --- 6. hostile queries --------------------------------------------------------------------
HOSTILE = [
    "NEAR(secret plan)",
    "NEAR(secret plan, 2)",
    "secret OR plan",
    "secret AND NOT plan",
    "col:word",
    "text:secret",
    "name:secret",
    "{text name}:secret",
    "*",
    "secret*",
    "^secret",
    "secret + plan",
    "- secret",
    '"secret',
    'secret"',
    '""',
    '""""',
    '"secret""plan"',
    '"sec"ret"',
    "sec\x00ret",
    "\x00",
    "\\",
    "secret\\",
    '\\"secret\\"',
    "'; DROP TABLE messaging_message; --",
    "secret'); DELETE FROM messaging_message_fts; --",
    "a:b:c",
    "(((secret",
    "secret)))",
    "rowid:1",
    "messaging_message_fts:secret",
    "secret:*",
    "x" * 10_000,
    "secret " * 2_000,
    '"' * 10_000,
    "é" * 10_000,
]


@pytest.mark.parametrize("query", HOSTILE, ids=lambda q: repr(q[:30]))
def test_hostile_queries_answer_without_error_and_find_only_ones_own(alice, query):
    """FTS5 syntax, quotes, NUL, backslashes, SQL and huge input: 200, one's own hits only."""
    eve = make_local_person("eve")
    mine = received(alice.user, "rita", "the secret plan").id
    received(eve, "rita", "the secret plan, text secret, name secret")

    html = page_of(alice, query)
    assert NO_SUCH_SEARCH not in html
    rows = rows_of(alice, query)
    assert set(hits(html)) <= {mine}
    assert set(hits(rows["html"])) <= {mine}
    assert Message.objects.filter(id=mine).exists()
    assert found(alice, "secret plan") == [mine]  # the index survived


@pytest.mark.parametrize(
    "raw", ["q=%FF%FE", "q=%ED%A0%80budget", "q=%C0%AE%00", "q=budget&q=%22", "q=%E2%80%AEbudget"]
)
def test_undecodable_and_repeated_query_strings_answer_200(alice, raw):
    """Bytes that are not UTF-8, a lone surrogate, a bidi override, q twice: 200, no error."""
    received(alice.user, "rita", "the budget is ready")

    for suffix in ("", "&rows=1"):
        response = alice.get(f"/search/?{raw}{suffix}")
        assert response.status_code == 200
        assert NO_SUCH_SEARCH not in response.content.decode()


def test_operator_words_are_plain_words(alice):
    """FTS5's OR, AND, NOT and NEAR are searched as plain words, not obeyed as operators."""
    both = received(alice.user, "rita", "alpha and beta", at=1_000)
    received(alice.user, "rita", "only alpha", at=2_000)
    received(alice.user, "rita", "only beta", at=3_000)

    assert found(alice, "alpha OR beta") == []
    assert found(alice, "alpha AND beta") == [both.id]
    assert found(alice, "alpha NOT beta") == []
    assert found(alice, "NEAR(alpha beta)") == []
    near = received(alice.user, "rita", "alpha is near beta", at=4_000)
    assert found(alice, "NEAR(alpha beta)") == [near.id]


PROPERTY = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
TOKENS = [
    "secret",
    "plan",
    "sec",
    "café",
    "CAFE",
    "مرحبا",
    "שלום",
    "🎉",
    "NEAR(",
    "OR",
    "AND",
    "NOT",
    '"',
    "'",
    "*",
    "^",
    ":",
    "text:",
    "name:",
    "(",
    ")",
    "+",
    "-",
    "{",
    "}",
    "\\",
    "\x00",
    ";",
    "%",
    "_",
]
QUERIES = st.text(max_size=300) | st.lists(st.sampled_from(TOKENS), max_size=20).map(
    lambda parts: "".join(parts)
)


@PROPERTY
@given(text=QUERIES)
def test_any_query_raises_nothing_and_returns_only_the_owners_messages(alice, text):
    """search_messages() on any text: no exception, only the owner's messages."""
    if not Message.objects.exists():
        for owner in (alice.user, make_local_person("eve")):
            received(owner, "rita", "the secret plan café مرحبا שלום 🎉")
            sent(owner, "bob", "NEAR OR AND NOT text name sec % _")
    page = search.search_messages(owner=alice.user, text=text)
    assert all(hit.message.owner_id == alice.user.pk for hit in page.hits)
    assert len(page.hits) <= search.PAGE_SIZE


# --- 7. bad parameters ---------------------------------------------------------------------
BAD_PARAMS = [
    {"before": "abc"},
    {"before": "-1"},
    {"before": "1" * 19},
    {"before": "²"},
    {"with": "bad name!"},
    {"with": "x" * 151},
    {"with": "<script>"},
]


@pytest.mark.parametrize("params", BAD_PARAMS, ids=lambda p: repr(p)[:30])
def test_a_bad_parameter_answers_400_on_the_page(alice, params):
    """A cursor that is no id or a username that cannot be: a 400 page that says so."""
    received(alice.user, "rita", "the budget is ready")

    response = alice.get("/search/", {"q": "budget", **params})
    assert response.status_code == 400
    html = response.content.decode()
    assert NO_SUCH_SEARCH in html and hits(html) == []
    assert "<script>" not in html
    assert "Back to the newest results" not in html  # there are no results to go back to


@pytest.mark.parametrize("params", BAD_PARAMS, ids=lambda p: repr(p)[:30])
def test_a_bad_parameter_answers_400_json_for_rows(alice, params):
    """The same for ?rows=1: a JSON error, never a 500."""
    response = alice.get("/search/", {"q": "budget", "rows": "1", **params})
    assert response.status_code == 400
    assert response.json() == {"error": {"code": "invalid_field", "message": NO_SUCH_SEARCH}}


def test_an_unknown_but_valid_username_in_with_finds_nothing(alice):
    """?with=nobody is a valid name with no conversation: 200 and no hits."""
    received(alice.user, "rita", "the budget is ready")

    assert found(alice, "budget", **{"with": "nobody"}) == []


# --- 8. pagination -------------------------------------------------------------------------
def test_results_page_newest_first_and_more_results_follows_without_gap(alice):
    """More than PAGE_SIZE hits: pages of PAGE_SIZE, newest first, More results to the rest."""
    total = search.PAGE_SIZE * 2 + 5
    ids = [
        (received if i % 2 else sent)(alice.user, "rita", f"report number {i}", at=1_000 + i).id
        for i in range(total)
    ]
    received(alice.user, "rita", "something else", at=10_000)
    newest_first = sorted(ids, reverse=True)

    html = page_of(alice, "report")
    pages = [hits(html)]
    assert pages[0] == newest_first[: search.PAGE_SIZE]
    more = re.search(r'<a id="search-more" href="([^"]*)"(?! hidden)>More results</a>', html)
    assert more, "no More results link"
    url = more.group(1).replace("&amp;", "&")
    while url:
        response = alice.get("/search/" + url)
        assert response.status_code == 200
        html = response.content.decode()
        pages.append(hits(html))
        assert "Back to the newest results" in html
        more = re.search(r'<a id="search-more" href="([^"]*)"(?! hidden)>More results</a>', html)
        url = more.group(1).replace("&amp;", "&") if more else ""

    assert [len(p) for p in pages] == [search.PAGE_SIZE, search.PAGE_SIZE, 5]
    assert [i for p in pages for i in p] == newest_first


def test_rows_give_a_more_url_that_pages_the_same_way(alice):
    """?rows=1 answers more_url; following it (with rows=1) gives the rest, then none."""
    total = search.PAGE_SIZE + 3
    ids = [received(alice.user, "rita", f"memo {i}", at=1_000 + i).id for i in range(total)]
    received(alice.user, "bob", "memo to bob", at=5_000)  # not in the conversation asked for

    first = rows_of(alice, "memo", **{"with": "rita"})
    assert first["count"] == search.PAGE_SIZE and first["more_url"]
    assert "with=rita" in first["more_url"]
    second = alice.get("/search/" + first["more_url"] + "&rows=1").json()
    assert second["count"] == 3 and second["more_url"] == ""
    assert hits(first["html"]) + hits(second["html"]) == sorted(ids, reverse=True)


def test_exactly_a_page_of_hits_has_no_more_results(alice):
    """PAGE_SIZE hits exactly: no More results link (no empty page to follow)."""
    for i in range(search.PAGE_SIZE):
        received(alice.user, "rita", f"memo {i}", at=1_000 + i)

    rows = rows_of(alice, "memo")
    assert rows["count"] == search.PAGE_SIZE and rows["more_url"] == ""
    assert '<a id="search-more" href="" hidden>' in page_of(alice, "memo")


# --- 9. excerpt ----------------------------------------------------------------------------
def test_matching_words_are_marked(alice):
    """Each matching word of the excerpt is in <mark>, the others are not."""
    message = received(alice.user, "rita", "Budget review: the budget for Q3 is late")

    hit = hit_html(page_of(alice, "budget late"), message.id)
    assert hit.count("<mark>") == 3
    assert "<mark>Budget</mark> review: the <mark>budget</mark> for Q3 is <mark>late</mark>" in hit


def test_a_long_message_is_cut_around_the_match(alice):
    """A long message shows about EXCERPT_CHARS around the first match, "…" where cut."""
    text = (
        " ".join(f"filler{i}" for i in range(100))
        + " needle "
        + " ".join(f"after{i}" for i in range(100))
    )
    message = received(alice.user, "rita", text)

    hit = hit_html(page_of(alice, "needle"), message.id)
    excerpt = re.search(r'<span class="search-hit__excerpt" dir="auto">(.*?)</span>', hit, re.S)
    assert excerpt
    shown = excerpt.group(1)
    assert shown.startswith("…") and shown.endswith("…")
    assert "<mark>needle</mark>" in shown
    plain = shown.replace("<mark>", "").replace("</mark>", "").strip("…")
    assert len(plain) <= search.EXCERPT_CHARS
    assert plain.strip() in text  # cut at word boundaries, nothing made up
    assert "filler0 " not in shown and "after99" not in shown


def test_html_in_a_message_is_shown_escaped(alice):
    """<script> and <b> in a message appear as text in the page and in the rows."""
    message = received(alice.user, "rita", "look <script>alert(1)</script> and <b>bold</b> move")

    for html in (page_of(alice, "bold"), rows_of(alice, "bold")["html"]):
        hit = hit_html(html, message.id)
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in hit
        assert "&lt;b&gt;<mark>bold</mark>&lt;/b&gt;" in hit
        assert "<script>" not in hit and "<b>" not in hit


def test_html_in_a_file_name_is_shown_escaped(alice):
    """A file named with markup is found and its name escaped."""
    message = with_file(received(alice.user, "rita", ""), '<img src=x onerror="x()">plan.pdf')

    hit = hit_html(page_of(alice, "plan"), message.id)
    assert "&lt;img src=x onerror=&quot;x()&quot;&gt;<mark>plan</mark>.pdf" in hit
    assert "<img" not in hit


def test_the_query_is_shown_escaped(alice):
    """What one typed comes back in the box and the title, escaped."""
    html = page_of(alice, '"><script>alert(1)</script>')

    assert "<script>alert(1)</script>" not in html
    assert 'value="&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"' in html


# --- 10. landing on a result ---------------------------------------------------------------
def conversation_of_30(alice) -> list[Message]:
    """30 messages with rita, alternately received and sent, in order; the 15th says needle."""
    return [
        (received if i % 2 else sent)(
            alice.user, "rita", "needle" if i == 14 else f"message {i}", at=1_000 + i
        )
        for i in range(30)
    ]


def test_a_result_opens_its_message_with_the_ones_around_it(alice):
    """Following a hit shows the found message, marked, with AROUND on each side."""
    messages = conversation_of_30(alice)
    target = messages[14]
    link = re.search(r'href="(/chat/rita/\?at=(\d+)#m-\d+)"', page_of(alice, "needle"))
    assert link and int(link.group(2)) == target.id

    response = alice.get(link.group(1).split("#")[0])
    assert response.status_code == 200
    html = response.content.decode()
    bubbles = BUBBLE.findall(html)
    shown = [int(i) for _, i in bubbles]
    assert shown == [m.id for m in messages[14 - AROUND : 14 + AROUND + 1]]
    assert [int(i) for mark, i in bubbles if mark] == [target.id]
    assert f'class="bubble bubble--in bubble--found" id="m-{target.id}"' in html or (
        f'class="bubble bubble--out bubble--found" id="m-{target.id}"' in html
    )


def test_a_result_page_links_to_older_and_latest_messages(alice):
    """With older messages before the window: an Older messages link from its first, and
    a Latest messages link; the page is not live (it is not the latest)."""
    messages = conversation_of_30(alice)

    html = alice.get(f"/chat/rita/?at={messages[14].id}").content.decode()
    first_shown = messages[14 - AROUND]
    assert f'<a href="?before={first_shown.id}">Older messages</a>' in html
    assert '<a href="/chat/rita/">Latest messages</a>' in html
    assert 'data-live="0"' in html
    older = alice.get(f"/chat/rita/?before={first_shown.id}").content.decode()
    assert [int(i) for _, i in BUBBLE.findall(older)] == [m.id for m in messages[: 14 - AROUND]]


def test_a_result_near_the_start_has_no_older_link(alice):
    """The 3rd message found: the page starts at the first, with no Older messages link."""
    messages = conversation_of_30(alice)

    html = alice.get(f"/chat/rita/?at={messages[2].id}").content.decode()
    assert [int(i) for _, i in BUBBLE.findall(html)] == [m.id for m in messages[: 2 + AROUND + 1]]
    assert "Older messages" not in html
    assert '<a href="/chat/rita/">Latest messages</a>' in html


def test_a_result_near_the_end_shows_up_to_the_latest(alice):
    """The 28th message found: the page runs to the last message."""
    messages = conversation_of_30(alice)

    html = alice.get(f"/chat/rita/?at={messages[27].id}").content.decode()
    assert [int(i) for _, i in BUBBLE.findall(html)] == [m.id for m in messages[27 - AROUND :]]


def test_a_message_of_another_conversation_is_404(alice):
    """?at= of one's message with bob, on the conversation with rita: 404 with the error."""
    received(alice.user, "rita", "hello rita")
    with_bob = received(alice.user, "bob", "hello bob")

    response = alice.get(f"/chat/rita/?at={with_bob.id}")
    assert response.status_code == 404
    html = response.content.decode()
    assert NOT_IN_CONVERSATION in html
    assert f'id="m-{with_bob.id}"' not in html
    # said about the page, not about the message being typed
    assert 'aria-invalid="true"' not in html and 'id="compose-error"' not in html


def test_a_message_of_another_person_is_404(alice):
    """?at= of eve's own message with rita, on alice's conversation with rita: 404."""
    eve = make_local_person("eve")
    received(alice.user, "rita", "hello rita")
    theirs = received(eve, "rita", "private to eve")

    response = alice.get(f"/chat/rita/?at={theirs.id}")
    assert response.status_code == 404
    html = response.content.decode()
    assert NOT_IN_CONVERSATION in html and "private to eve" not in html


@pytest.mark.parametrize("at", ["abc", "-1", "1" * 19, "1.5"])
def test_an_at_that_is_no_id_is_400(alice, at):
    """?at=abc: 400, never a 500."""
    received(alice.user, "rita", "hello rita")

    response = alice.get("/chat/rita/", {"at": at})
    assert response.status_code == 400
    assert "That page of the conversation does not exist." in response.content.decode()


# --- 11. the index kept in step ------------------------------------------------------------
def test_an_edited_text_is_searched_as_it_now_is(alice):
    """After a message's text changes, its old word is not found and its new one is."""
    message = received(alice.user, "rita", "the old wording")

    message.text = "the fresh wording"
    message.save(update_fields=["text"])
    assert found(alice, "old") == []
    assert found(alice, "fresh") == [message.id]

    Message.objects.filter(id=message.id).update(text="third version")
    assert found(alice, "fresh") == []
    assert found(alice, "third") == [message.id]


def test_a_deleted_message_is_not_found(alice):
    """Deleting a message (with its file) removes it from the index."""
    message = with_file(received(alice.user, "rita", "gone soon"), "gone.pdf")
    kept = received(alice.user, "rita", "gone later")

    message.delete()
    assert found(alice, "gone") == [kept.id]
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM messaging_message_fts WHERE rowid = %s", [message.id])
        assert cursor.fetchone() == (0,)


def test_a_file_added_in_the_same_transaction_is_searchable_by_name(alice):
    """A message stored, then its attachment in the same transaction: the name is found."""
    with transaction.atomic():
        message = received(alice.user, "rita", "here it is")
        with_file(message, "roadmap-2026.pdf")

    assert found(alice, "roadmap") == [message.id]
    assert found(alice, "here") == [message.id]


def test_a_renamed_file_is_searched_by_its_new_name(alice):
    """An attachment's new name is found, its old one no longer."""
    message = with_file(received(alice.user, "rita", ""), "draft.pdf")

    Attachment.objects.filter(message=message).update(name="final.pdf")
    assert found(alice, "draft") == []
    assert found(alice, "final") == [message.id]


@pytest.mark.django_db(transaction=True)
def test_the_migration_indexes_messages_stored_before_it(alice):
    """Messages (and a file) stored under migration 0005 are found once 0006 has run."""
    before = [("messaging", "0005_office_administrators_view_attachment")]
    executor = MigrationExecutor(connection)
    leaves = executor.loader.graph.leaf_nodes()
    try:
        executor.migrate(before)
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM sqlite_master WHERE name LIKE '%fts%'")
            assert cursor.fetchone() == (0,)  # 0006 really was undone
        apps = executor.loader.project_state(before).apps
        OldMessage = apps.get_model("messaging", "Message")
        OldAttachment = apps.get_model("messaging", "Attachment")
        old = OldMessage.objects.create(
            envelope_id=protocol.new_envelope_id(),
            kind="message",
            owner_id=alice.user.pk,
            peer_username="rita",
            sender_username="rita",
            recipient_username="alice",
            direction="in",
            text="written before search existed",
            created_ms=1_000,
            status="delivered",
        )
        with_file_old = OldMessage.objects.create(
            envelope_id=protocol.new_envelope_id(),
            kind="message",
            owner_id=alice.user.pk,
            peer_username="rita",
            sender_username="rita",
            recipient_username="alice",
            direction="in",
            text="",
            created_ms=2_000,
            status="delivered",
        )
        OldAttachment.objects.create(
            message_id=with_file_old.id,
            file_id=uuid.uuid4(),
            node="branch",
            name="ancient-minutes.pdf",
            mime="application/pdf",
            kind="pdf",
            size=1234,
            sha256="0" * 64,
            key=b"k" * 72,
            state="stored",
        )
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(leaves)

    assert found(alice, "existed") == [old.id]
    assert found(alice, "ancient") == [with_file_old.id]
    new = received(alice.user, "rita", "written after search existed", at=3_000)
    assert found(alice, "existed") == [new.id, old.id]


# --- 12. search terms are never logged -----------------------------------------------------
@pytest.mark.parametrize("rows", ["", "1"])
def test_search_terms_are_never_logged(alice, caplog, rows):
    """A search that fails logs its path only: never what was searched for."""
    caplog.set_level(logging.DEBUG)
    received(alice.user, "rita", "secretword")
    caplog.clear()

    response = alice.get("/search/", {"q": "secretword", "before": "abc", "rows": rows})
    assert response.status_code == 400

    formatter = StructuredFormatter()
    lines = [formatter.format(record) for record in caplog.records]
    assert lines, "the 400 was not logged at all"
    assert not [line for line in lines if "secretword" in line]
    assert any("/search/" in line for line in lines)
    assert any('request="GET /search/"' in line for line in lines)
    assert all("q=" not in line for line in lines)


def test_a_logged_record_carrying_a_request_keeps_method_and_path_only():
    """StructuredFormatter writes a record's request as method and path, no query string."""
    request = RequestFactory().get("/search/", {"q": "secretword", "with": "rita"})
    record = logging.makeLogRecord(
        {
            "name": "django.request",
            "levelno": logging.WARNING,
            "levelname": "WARNING",
            "msg": "Bad Request: %s",
            "args": (request.path,),
            "request": request,
            "status_code": 400,
        }
    )
    line = StructuredFormatter().format(record)
    assert '"Bad Request: /search/"' in line
    assert 'request="GET /search/"' in line and "status_code=400" in line
    assert "secretword" not in line and "rita" not in line


# --- what the browser keeps of a search ------------------------------------------------------


def test_the_search_box_takes_what_search_keeps_everywhere_it_is(alice):
    """The box's maxlength is MAX_QUERY_CHARS on the home, in a conversation and on the
    results page (not the message box's limit)."""
    for path in ("/chats/", "/chat/rita/", "/search/?q=x"):
        page = alice.get(path).content.decode()
        box = re.search(r'<input type="search"[^>]*>', page)
        assert box, path
        assert f'maxlength="{search.MAX_QUERY_CHARS}"' in box.group(0), path


def test_the_terms_stay_out_of_the_title_and_of_the_next_pages_referer(alice):
    response = alice.get("/search/", {"q": "acquisition target"})
    title = re.search(r"<title>(.*?)</title>", response.content.decode(), re.S).group(1)
    assert "acquisition" not in title
    assert response["Referrer-Policy"] == "no-referrer"
    assert alice.get("/search/", {"q": "x", "rows": "1"})["Referrer-Policy"] == "no-referrer"


def test_a_logged_out_search_comes_back_to_an_empty_search(client):
    """The login redirect keeps /search/ but not what was searched for: it would reach the
    login form, the session and the record of failed logins."""
    response = client.get("/search/", {"q": "acquisition target"})
    assert response.status_code == 302
    assert "acquisition" not in response["Location"]
    assert "next=%2Fsearch%2F" in response["Location"]


def test_the_owner_column_is_not_searched_as_words(alice):
    """The SQLite index keeps each row's owner as a token ("o<id>") for the engine to
    narrow by; a person typing that token finds no message that does not say it."""
    received(alice.user, "rita", "nothing to see")
    said = received(alice.user, "rita", f"the code is o{alice.user.pk}")

    assert found(alice, f"o{alice.user.pk}") == [said.id]
