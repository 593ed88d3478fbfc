"""Full-text search over one person's messages, on a real node's SQLite database.

bench.run acts as hq's web process (same settings, same database file: SQLite in WAL
mode, every migration applied, the FTS5 triggers of messaging 0006 in place). This part
stores, through the ORM in batches of one transaction each (so the triggers index every
row as they do in production), one person's messages spread over 50 conversations and as
many messages again owned by three other people of the node, interleaved in time, so the
owner filter has work to do. The text is generated: sentences of mixed length from a
vocabulary with a Zipf-like word frequency, accented words, some messages in Arabic or
Hebrew, emoji, numbers, and files whose names are searched too.

Then each kind of query is timed two ways, round after round, the kinds interleaved:
- over HTTP: GET /search/?q=...&rows=1 of hq's uvicorn, logged in, keep-alive, loopback
  (what the page's script asks as one types; the time includes the HTTP floor);
- in this process: messaging.search.search_messages() on the same database file (the
  query, the rows and the excerpts; no template, session or middleware).
What someone types is sent as typed: a last word with nothing after it matches as a
prefix, as it does on the page.

Finally the size of the search index (FTS5's shadow tables, through SQLite's dbstat) per
message, next to the message table's, as built by the triggers and after FTS5 'optimize'.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import requests

from p2psocial.devnet import Network

SEED = 20240611
CONVERSATIONS = 50  # of the person who searches
OTHER_OWNERS = 3  # other people of the node, owning as many messages in all
BATCH = 5000  # messages per transaction
SPAN_MS = 2 * 365 * 24 * 3600 * 1000  # the history covers two years
TARGET_P50_MS = 50.0

# Planted words, never produced by the generator (checked): their counts are known.
RARE_WORD = "kumquat"  # in 10 of the person's messages (2 of them in file names)
RARE_COUNT = 10
OTHERS_WORD = "ventspils"  # in 10 % of the other people's messages, none of the person's
OTHERS_SHARE = 0.10
ABSENT_WORD = "zyzzogeton"  # in no message
PHRASE = "quarterly budget review"  # in 0.5 % of all messages; its words are common alone
PHRASE_SHARE = 0.005

# The head of the vocabulary, most frequent first (rank 1 = "the").
HEAD = """
the to and meeting I a you of is in it for we that on this be with can will have are not
at do me so from please thanks report if but my all about today tomorrow send just there
your ok was what time need as get call know up by an or our file budget see when would
team client week let yes no good new review project update now out one they office how
done draft contract check here back morning any been should also could more some next
last like make still then think day well has them sure want go already after before
customer invoice schedule agenda minutes slides deadline approval signed payment order
delivery shipment warehouse price offer quote proposal presentation training holiday
leave lunch coffee room floor building parking printer laptop password network server
email phone address colleague manager director department finance legal sales marketing
support audit tax quarter annual monthly weekly daily plan strategy risk issue problem
question answer help info details attached version final change changes comments
feedback notes list table numbers figures total cost costs revenue margin forecast
target results meet meets met reply replied remember reminder urgent important soon
later tonight yesterday friday monday tuesday wednesday thursday weekend morning
afternoon evening noon visit trip flight hotel train taxi airport booking ticket
""".split()
# Words of other languages, accents included, placed in the middle of the ranks; both
# spellings of "résumé" are there, as people write both.
ACCENTED = """
café résumé resume Zürich zurich Müller naïve crème São Paulo Bogotá señora mañana déjà
Straße Grüße über für schön Genève Kraków Łódź Ørsted Ångström François Hélène José
Malmö façade fiancée protégé Córdoba Düsseldorf Besançon Reykjavík Škoda Dvořák
""".split()
ARABIC = "مرحبا شكرا اجتماع تقرير غدا الميزانية العميل عقد فاتورة موعد الفريق المدير".split()
HEBREW = "שלום תודה פגישה דוח מחר תקציב לקוח חוזה חשבונית תאריך צוות מנהל".split()
EMOJI = ["👍", "🙏", "😂", "🎉", "✅", "❤️", "👩‍💻", "🇫🇷", "☕", "🔥", "😅", "📎"]
FIRST = "amira jonas li sofia mateo chloe yusuf hanna noah elena omar ines lukas maya".split()
LAST = "haddad muller wei rossi garcia martin kaya berg cohen novak silva dubois khan".split()


def _vocabulary(rng: random.Random) -> list[str]:
    """About 30,000 distinct words, most frequent first: HEAD, then made-up words with
    the accented ones and the Arabic and Hebrew ones scattered among ranks 300-3000."""
    onsets = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br"]
    onsets += ["ch", "st", "tr", "pl", "gr", "sh", "th", "cr", "fl", "sk", "h", "j", "w"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "io", "y"]
    codas = ["", "", "", "", "", "n", "r", "s", "t", "l", "m", "x", "nd", "st", "ck", "ng"]
    planted = {RARE_WORD, OTHERS_WORD, ABSENT_WORD}
    seen = {w.casefold() for w in HEAD + ACCENTED} | planted
    made: list[str] = []
    while len(made) < 30_000:
        word = "".join(
            rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas)
            for _ in range(rng.choices((1, 2, 3), weights=(3, 5, 2))[0])
        )
        if word not in seen and not any(p in word for p in planted):
            seen.add(word)
            made.append(word)
    words = list(HEAD) + made
    for extra in ACCENTED + ARABIC + HEBREW:
        words.insert(rng.randint(300, 3000), extra)
    return words


@dataclass
class Corpus:
    """The generated history, with what is known of it."""

    rng: random.Random
    words: list[str]
    cum_weights: list[float]
    peers: list[str]  # the person's conversations, busiest first
    peer_weights: list[float]
    texts_bytes: int = 0
    files: int = 0
    by_peer: dict[str, int] = field(default_factory=dict)

    @classmethod
    def make(cls, seed: int, real_peers: list[str]) -> Corpus:
        rng = random.Random(seed)
        words = _vocabulary(rng)
        total, cum = 0.0, []
        for rank in range(1, len(words) + 1):
            total += 1.0 / (rank + 2.7) ** 1.1  # Zipf-Mandelbrot
            cum.append(total)
        names = [f"{f}.{last}" for f in FIRST for last in LAST]
        rng.shuffle(names)
        peers = (real_peers + names)[:CONVERSATIONS]
        rng.shuffle(peers)
        peer_weights = [1.0 / rank for rank in range(1, len(peers) + 1)]
        return cls(rng, words, cum, peers, peer_weights)

    def _length(self) -> int:
        r = self.rng.random()
        if r < 0.6:
            return self.rng.randint(1, 10)
        if r < 0.93:
            return self.rng.randint(10, 35)
        return self.rng.randint(35, 150)

    def text(self, plant: list[str]) -> str:
        rng = self.rng
        r = rng.random()
        if r < 0.015:
            tokens = rng.choices(ARABIC, k=rng.randint(2, 12))
        elif r < 0.03:
            tokens = rng.choices(HEBREW, k=rng.randint(2, 12))
        else:
            tokens = rng.choices(self.words, cum_weights=self.cum_weights, k=self._length())
        for word in plant:
            tokens.insert(rng.randint(0, len(tokens)), word)
        if rng.random() < 0.1:  # a time, a ticket, an amount or a year
            number = rng.choice(
                [
                    f"{rng.randint(7, 18)}:{rng.choice(['00', '15', '30', '45'])}",
                    f"#{rng.randint(1000, 99999)}",
                    f"€{rng.randint(1, 90)},{rng.randint(100, 999)}",
                    str(rng.randint(2019, 2026)),
                ]
            )
            tokens.insert(rng.randint(0, len(tokens)), number)
        if rng.random() < 0.15:
            tokens.insert(rng.randint(0, len(tokens)), rng.choice(EMOJI))
        # Sentences of 4-15 words: capitalised, ended with . ? or !
        out, since = [], 0
        for token in tokens:
            if since == 0:
                token = token[:1].upper() + token[1:]
            out.append(token)
            since += 1
            if since >= rng.randint(4, 15):
                out[-1] += rng.choice(".....?!")
                since = 0
        if since and rng.random() < 0.7:
            out[-1] += rng.choice("...?!")
        return " ".join(out)

    def file_name(self, plant: str | None) -> tuple[str, str, str]:
        """(name, mime, kind) of a file someone sent."""
        rng = self.rng

        def word() -> str:
            return rng.choices(self.words[50:], cum_weights=self.cum_weights[50:], k=1)[0]

        pdf = ("application/pdf", "pdf")
        choice = rng.randrange(7)
        if plant:
            return (f"{plant} {word()} {rng.randint(2019, 2026)}.pdf", *pdf)
        if choice == 0:
            day = f"2024{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
            return f"IMG_{day}_{rng.randint(0, 235959):06d}.jpg", "image/jpeg", "image"
        if choice == 1:
            return (f"Scan {rng.randint(1, 400)}.pdf", *pdf)
        if choice == 2:
            return (f"{word().title()} {rng.choice(ACCENTED)}.pdf", *pdf)
        if choice == 3:
            return (f"{rng.choice(['تقرير', 'דוח'])} {rng.randint(1, 99)}.pdf", *pdf)
        if choice == 4:
            return f"recording {rng.randint(1, 999)}.m4a", "audio/mp4", "audio"
        docx = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
        return f"{word()}_{word()}_v{rng.randint(1, 9)}.docx", docx, "download"


def seed_messages(owner, others: list, messages: int) -> tuple[Corpus, dict]:
    """messages owned by owner and as many owned by others (round robin), interleaved in
    time; returns the corpus and what seeding took."""
    from django.db import transaction

    from messaging.models import Attachment, Message

    corpus = Corpus.make(SEED, real_peers=["rcv1", "rcv2", "rcv3", "rcv4"])
    rng = corpus.rng
    total = 2 * messages
    owners = [0] * messages + [1 + i % len(others) for i in range(messages)]
    rng.shuffle(owners)
    mine = [i for i, o in enumerate(owners) if o == 0]
    theirs = [i for i, o in enumerate(owners) if o != 0]
    rare = set(rng.sample(mine, RARE_COUNT))
    rare_files = set(sorted(rare)[::5][:2])  # two of them as a file's name
    others_word = set(rng.sample(theirs, int(len(theirs) * OTHERS_SHARE)))
    phrase = set(rng.sample(range(total), int(total * PHRASE_SHARE)))
    people = [owner, *others]
    other_peers = corpus.peers[::-1]  # the same people, talking with others as often
    start_ms = int(time.time() * 1000) - SPAN_MS
    now = datetime.now(timezone.utc)
    started = time.perf_counter()
    for first in range(0, total, BATCH):
        rows, files = [], []
        for index in range(first, min(first + BATCH, total)):
            who = owners[index]
            peers = corpus.peers if who == 0 else other_peers
            peer = rng.choices(peers, weights=corpus.peer_weights, k=1)[0]
            if who == 0:
                corpus.by_peer[peer] = corpus.by_peer.get(peer, 0) + 1
            plant = []
            if index in rare and index not in rare_files:
                plant.append(RARE_WORD)
            if index in others_word:
                plant.append(OTHERS_WORD)
            if index in phrase:
                plant.append(PHRASE)  # one token: its words stay together
            is_file = index in rare_files or rng.random() < 0.04
            text = corpus.text(plant)
            if is_file and not plant and rng.random() < 0.5:
                text = ""  # a file without a caption
            corpus.texts_bytes += len(text.encode())
            out = rng.random() < 0.5
            username = people[who].username
            rows.append(
                Message(
                    envelope_id=uuid.uuid4(),
                    owner=people[who],
                    peer_username=peer,
                    sender_username=username if out else peer,
                    recipient_username=peer if out else username,
                    direction="out" if out else "in",
                    text=text,
                    created_ms=start_ms + index * SPAN_MS // total + rng.randint(0, 999),
                    status="delivered" if out else "read",
                    delivered_at=now if out else None,
                    read_at=None if out else now,
                )
            )
            if is_file:
                files.append(
                    (len(rows) - 1, corpus.file_name(RARE_WORD if index in rare_files else None))
                )
        with transaction.atomic():
            Message.objects.bulk_create(rows)
            Attachment.objects.bulk_create(
                [
                    Attachment(
                        message=rows[at],
                        file_id=uuid.uuid4(),
                        node="hq" if rows[at].direction == "out" else "branch",
                        name=name,
                        mime=mime,
                        kind=kind,
                        size=rng.randint(10_000, 20_000_000),
                        sha256=os.urandom(32).hex(),
                        key=os.urandom(72),
                        state="stored",
                        stored_at=now,
                    )
                    for at, (name, mime, kind) in files
                ]
            )
        corpus.files += len(files)
    seconds = time.perf_counter() - started
    return corpus, {"seconds": seconds, "messages": total, "files": corpus.files}


# --- the queries -------------------------------------------------------------------------
@dataclass
class Kind:
    label: str
    q: str
    with_username: str | None = None
    second_page: bool = False
    matches: int = 0  # the person's messages the query matches (with the conversation)
    matches_node: int = 0  # every owner's
    before: int | None = None  # the second page's cursor
    http_ms: list[float] = field(default_factory=list)
    call_ms: list[float] = field(default_factory=list)
    plan: list[str] = field(default_factory=list)

    @property
    def expected_hits(self) -> int:
        from messaging.search import PAGE_SIZE

        if self.second_page:
            return max(0, min(PAGE_SIZE, self.matches - PAGE_SIZE))
        return min(PAGE_SIZE, self.matches)

    def params(self) -> dict:
        params = {"q": self.q}
        if self.with_username:
            params["with"] = self.with_username
        if self.before is not None:
            params["before"] = str(self.before)
        return params


def kinds_for(corpus: Corpus) -> list[Kind]:
    middling = corpus.peers[len(corpus.peers) // 2]  # the 25th busiest of 50 conversations
    return [
        Kind("rare word (10 messages)", RARE_WORD),
        Kind("common word, as typed (prefix)", "meeting"),
        Kind("common word, exact (space after)", "meeting "),
        Kind("prefix, 2 letters", "me"),
        Kind("prefix, 3 letters", "mee"),
        Kind("two words, the last being typed", "budget re"),
        Kind("quoted phrase", '"budget review"'),
        Kind("accented, matches unaccented too", "résumé"),
        Kind("Hebrew word", "תקציב"),
        Kind("no match", ABSENT_WORD),
        Kind("word only others use (none mine)", OTHERS_WORD),
        Kind("one conversation (middling)", "meeting", with_username=middling),
        Kind("second page (cursor)", "meeting", second_page=True),
    ]


def count_matches(owner, kind: Kind) -> None:
    """What each query matches, counted with the engine's own expression (untimed)."""
    from django.db import connection

    from messaging.search import _fts5_match, parse_query

    match = _fts5_match(parse_query(kind.q))
    # CROSS JOIN, as search.py has it: with a plain JOIN SQLite may walk every message and
    # run the MATCH once per row.
    base = (
        "SELECT COUNT(*) FROM messaging_message_fts f CROSS JOIN messaging_message m "
        "ON m.id = f.rowid WHERE messaging_message_fts MATCH %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(base, [match])
        kind.matches_node = cursor.fetchone()[0]
        sql, params = base + " AND m.owner_id = %s", [match, owner.pk]
        if kind.with_username:
            sql, params = sql + " AND m.peer_username = %s", [*params, kind.with_username]
        cursor.execute(sql, params)
        kind.matches = cursor.fetchone()[0]


def query_plan(owner, kind: Kind) -> list[str]:
    """EXPLAIN QUERY PLAN of the statement search_messages() runs to find the ids."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from messaging.search import search_messages

    with CaptureQueriesContext(connection) as captured:
        search_messages(
            owner=owner, text=kind.q, peer_username=kind.with_username, before_id=kind.before
        )
    statement = next(q["sql"] for q in captured.captured_queries if "MATCH" in q["sql"])
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN QUERY PLAN " + statement)
        return [f"{row[0]}|{row[1]}| {row[3]}" for row in cursor.fetchall()]


def _timed_http(session: requests.Session, url: str, kind: Kind) -> tuple[float, dict]:
    started = time.perf_counter()
    response = session.get(url, params={**kind.params(), "rows": "1"}, timeout=30)
    elapsed = (time.perf_counter() - started) * 1000
    response.raise_for_status()
    return elapsed, response.json()


def time_queries(
    session: requests.Session, base_url: str, owner, kinds: list[Kind], *, rounds: int,
    budget_s: float,
) -> dict:  # fmt: skip
    """Each kind rounds times over HTTP, then rounds times in this process, the kinds
    interleaved; each phase stops early after budget_s. Every answer is checked."""
    from messaging.search import search_messages

    url = base_url + "/search/"
    for kind in kinds:  # the second page's cursor, and one warm-up of each
        if kind.second_page:
            first = Kind(kind.label, kind.q, kind.with_username)
            _, answer = _timed_http(session, url, first)
            more = parse_qs(urlsplit(answer["more_url"]).query)
            kind.before = int(more["before"][0])
            page = search_messages(owner=owner, text=kind.q, peer_username=kind.with_username)
            if page.older_cursor != kind.before:
                raise RuntimeError("the page and search_messages() disagree on the cursor")
        _timed_http(session, url, kind)
    done = {"http": 0, "call": 0}
    deadline = time.monotonic() + budget_s
    for _ in range(rounds):
        for kind in kinds:
            elapsed, answer = _timed_http(session, url, kind)
            if answer["count"] != kind.expected_hits:
                raise RuntimeError(
                    f"{kind.label}: {answer['count']} hits over HTTP, {kind.expected_hits} expected"
                )
            kind.http_ms.append(elapsed)
        done["http"] += 1
        if time.monotonic() > deadline:
            break
    deadline = time.monotonic() + budget_s
    for _ in range(rounds):
        for kind in kinds:
            started = time.perf_counter()
            page = search_messages(
                owner=owner, text=kind.q, peer_username=kind.with_username, before_id=kind.before
            )
            kind.call_ms.append((time.perf_counter() - started) * 1000)
            if len(page.hits) != kind.expected_hits:
                raise RuntimeError(f"{kind.label}: {len(page.hits)} hits in process")
        done["call"] += 1
        if time.monotonic() > deadline:
            break
    return done


# --- the index's size ----------------------------------------------------------------------
def index_size(db_path: Path) -> dict:
    """Bytes on disk (dbstat: pages of each b-tree) of the FTS5 table's shadow tables and
    of the message table, and the number of messages."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=20)
    try:
        conn.execute("PRAGMA busy_timeout=20000")
        sizes = dict(conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"))
        indexes = [
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' "
                "AND tbl_name = 'messaging_message'"
            )
        ]
        messages = conn.execute("SELECT COUNT(*) FROM messaging_message").fetchone()[0]
        indexed = conn.execute("SELECT COUNT(*) FROM messaging_message_fts").fetchone()[0]
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    finally:
        conn.close()
    fts = {name: size for name, size in sizes.items() if name.startswith("messaging_message_fts_")}
    return {
        "messages": messages,
        "indexed": indexed,
        "fts_bytes": sum(fts.values()),
        "fts_tables": fts,
        # the inverted index proper (terms, doclists and their prefix indexes)
        "index_bytes": fts.get("messaging_message_fts_data", 0)
        + fts.get("messaging_message_fts_idx", 0),
        # FTS5's own copy of each message's text and file name, and its token counts
        "content_bytes": fts.get("messaging_message_fts_content", 0)
        + fts.get("messaging_message_fts_docsize", 0),
        "message_table_bytes": sizes.get("messaging_message", 0),
        "message_indexes_bytes": sum(sizes.get(name, 0) for name in indexes),
        "page_size": page_size,
    }


def optimize_index() -> float:
    """FTS5 'optimize' (merges every segment into one); returns the seconds it took."""
    from django.db import connection, transaction

    started = time.perf_counter()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO messaging_message_fts (messaging_message_fts) VALUES ('optimize')"
        )
    return time.perf_counter() - started


# --- the whole part --------------------------------------------------------------------
def measure_search(
    net: Network, session: requests.Session, *, owner, others: list, messages: int,
    rounds: int, budget_s: float,
) -> dict:  # fmt: skip
    """Seed hq's database, time every kind of query, measure the index; returns figures."""
    from django.conf import settings

    db_path = net.node("hq").data_dir / "db.sqlite3"
    phases = {}
    started = time.perf_counter()
    corpus, seeding = seed_messages(owner, others, messages)
    kinds = kinds_for(corpus)
    phases["seed"] = time.perf_counter() - started
    started = time.perf_counter()
    for kind in kinds:
        count_matches(owner, kind)
    phases["count"] = time.perf_counter() - started
    planted = {kind.q: (kind.matches, kind.matches_node) for kind in kinds}
    if (
        planted[RARE_WORD][0] != RARE_COUNT
        or planted[OTHERS_WORD][0] != 0
        or planted[OTHERS_WORD][1] < messages * OTHERS_SHARE
        or planted[ABSENT_WORD][1] != 0
    ):
        raise RuntimeError(f"the planted words do not match as planted: {planted}")
    started = time.perf_counter()
    done = time_queries(session, net.node("hq").url, owner, kinds, rounds=rounds, budget_s=budget_s)
    for kind in kinds:
        kind.plan = query_plan(owner, kind)
    phases["time"] = time.perf_counter() - started
    narrowed = next(kind.with_username for kind in kinds if kind.with_username)
    started = time.perf_counter()
    size = index_size(db_path)
    optimize_s = optimize_index()
    size_optimized = index_size(db_path)
    phases["size"] = time.perf_counter() - started
    return {
        "seeding": seeding,
        "kinds": kinds,
        "rounds": done,
        "size": size,
        "size_optimized": size_optimized,
        "optimize_s": optimize_s,
        "text_bytes_per_message": corpus.texts_bytes / seeding["messages"],
        "conversation": {
            "peer": narrowed,
            "messages": corpus.by_peer.get(narrowed, 0),
        },
        "debug": settings.DEBUG,
        "phases_s": {name: round(seconds, 1) for name, seconds in phases.items()},
    }
