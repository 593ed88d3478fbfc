"""Full-text search over one person's own messages (sent and received): text, captions and
file names, with each database's own engine behind one function, search_messages().

What a person types is never handed to the engine: parse_query() keeps only the words
(runs of letters, digits and combining marks, as both engines' tokenizers see them) and
quoted phrases, and the engine's query is built from those, so no input can make a query
fail or reach another person's rows (those are filtered by owner in the same statement).
The last word, unquoted, matches as a prefix, for searching as one types.

The search terms are never logged: this module logs nothing, logged requests carry no
query string (p2psocial.logging), and the page's address is kept out of the access logs
(docs/deploy/nginx-log-format.conf) and of login redirects (accounts.middleware).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import cached_property

from django.db import connection

from accounts.models import User

from .models import Message
from .queries import attachment_of

MAX_QUERY_CHARS = 200  # what a search box takes; longer input is cut
MAX_TERMS = 12  # words and phrases in one query
MAX_PHRASE_WORDS = 12
MAX_WORD_CHARS = 64
PAGE_SIZE = 20
EXCERPT_CHARS = 140  # the excerpt around the first match, about


def _is_word_char(char: str) -> bool:
    """A letter, digit or combining mark (and private-use characters), as FTS5's unicode61
    tokenizer counts them, or one of the FORMAT_CHARS that index_form removes from inside
    words (a zero-width non-joiner); everything else separates words (spaces,
    punctuation, emoji)."""
    category = unicodedata.category(char)
    return category[0] in "LNM" or category == "Co" or FORMAT_CHARS.match(char) is not None


def _words(text: str) -> list[tuple[int, int]]:
    """The (start, end) of each word of text."""
    spans, start = [], None
    for index, char in enumerate(text):
        if _is_word_char(char):
            if start is None:
                start = index
        elif start is not None:
            spans.append((start, index))
            start = None
    if start is not None:
        spans.append((start, len(text)))
    return spans


# Marks that do not make a word another word for someone searching, removed from what is
# indexed and from what is searched: accents (once NFKD has split them from their letter),
# Hebrew points and cantillation, Arabic vowel marks, combining marks' supplements. The
# vowel signs and viramas of Indic scripts stay: they are part of the word's spelling.
# Migration 0006's p2p_search_fold() removes the same ranges on PostgreSQL.
MARKS = re.compile(
    "[\u0300-\u036f\u0483-\u0489\u0591-\u05bd\u05bf\u05c1\u05c2\u05c4\u05c5\u05c7"
    "\u0610-\u061a\u064b-\u065f\u0670\u06d6-\u06dc\u06df-\u06e4\u06e7\u06e8"
    "\u06ea-\u06ed\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]"
)


# Invisible format characters (soft hyphen, zero-width (non-)joiners and spaces, direction
# marks, word joiners, BOM): removed, so that a Persian word typed with a zero-width
# non-joiner, or a word with a soft hyphen, is one word on both sides. Same list in 0006.
FORMAT_CHARS = re.compile(
    "[\u00ad\u0600-\u0605\u061c\u06dd\u070f\u180e\u200b-\u200f\u202a-\u202e"
    "\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb]"
)
# Letters that NFKD leaves whole but a reader takes for plain ones (as PostgreSQL's
# unaccent does); final sigma is sigma. Same mapping in 0006's p2p_search_fold().
LETTERS = str.maketrans(
    {
        "Ł": "L", "ł": "l", "Ø": "O", "ø": "o", "Đ": "D", "đ": "d", "Ħ": "H", "ħ": "h",
        "\u0131": "i", "Æ": "AE", "æ": "ae", "Œ": "OE", "œ": "oe", "ẞ": "SS", "ß": "ss",
        "\u03c2": "\u03c3",  # final sigma: sigma
    }
)  # fmt: skip


def index_form(text: str) -> str:
    """Text as the index holds it and as queries look for it: compatibility-decomposed
    (NFKD), MARKS and FORMAT_CHARS removed, LETTERS mapped (ß as ss, ł as l). SQLite's
    triggers call it (registered on every connection as p2p_search_fold, messaging.apps);
    the engines fold case."""
    decomposed = unicodedata.normalize("NFKD", text)
    return FORMAT_CHARS.sub("", MARKS.sub("", decomposed)).translate(LETTERS)


def fold(word: str) -> str:
    """A word as the engines compare it: index_form, case folded (é = e = E, ß = ss)."""
    return index_form(word).casefold()


@dataclass(frozen=True)
class Term:
    words: tuple[str, ...]  # one word, or the words of a quoted phrase, as typed (NFC)
    prefix: bool  # the last, unquoted word: matches any word it begins


@dataclass(frozen=True)
class Query:
    terms: tuple[Term, ...]

    def __bool__(self) -> bool:
        return bool(self.terms)

    @cached_property
    def _wanted(self) -> tuple[tuple[str, bool], ...]:
        """Each term's words folded once, with whether it may match as a prefix."""
        return tuple(
            (fold(wanted), term.prefix and index == len(term.words) - 1)
            for term in self.terms
            for index, wanted in enumerate(term.words)
        )

    def matches(self, word: str) -> bool:
        """Whether a word of a message is one the query looks for (for the excerpt's marks;
        a phrase's words are marked wherever they are)."""
        folded = fold(word)
        return any(
            folded == wanted or (prefix and folded.startswith(wanted))
            for wanted, prefix in self._wanted
        )


# Quotation marks people's keyboards type for " (smart punctuation, other languages).
QUOTES = str.maketrans(dict.fromkeys("“”„‟«»\uff02「」『』", '"'))


_SEPARATE = frozenset({"Cc", "Cf", "Cs", "Cn"})  # what is left of them after FORMAT_CHARS


def parse_query(raw: str) -> Query:
    """The words and "quoted phrases" of what someone typed; anything else is dropped.

    Control characters (NUL among them) separate words, format characters are removed
    (as index_form does), curly and other QUOTES count as ", the input is cut to
    MAX_QUERY_CHARS and normalised (NFC), an unclosed quote runs to the end. At most
    MAX_TERMS terms, each word at most MAX_WORD_CHARS characters."""
    cleaned = FORMAT_CHARS.sub("", raw[: MAX_QUERY_CHARS * 4]).translate(QUOTES)
    cleaned = "".join(" " if unicodedata.category(c) in _SEPARATE else c for c in cleaned)
    cleaned = unicodedata.normalize("NFC", cleaned)[:MAX_QUERY_CHARS]
    parts = cleaned.split('"')
    terms: list[Term] = []
    for index, part in enumerate(parts):
        words = [part[s:e][:MAX_WORD_CHARS] for s, e in _words(part)]
        if not words:
            continue
        if index % 2 == 1:  # inside quotes
            terms.append(Term(tuple(words[:MAX_PHRASE_WORDS]), prefix=False))
        else:
            terms.extend(Term((word,), prefix=False) for word in words)
    # The last word is still being typed when it is outside quotes with nothing after it.
    last = parts[-1]
    typing = len(parts) % 2 == 1 and bool(last) and _is_word_char(last[-1])
    if typing and len(terms) <= MAX_TERMS:
        terms[-1] = Term(terms[-1].words, prefix=True)
    return Query(tuple(terms[:MAX_TERMS]))


def _engine_terms(query: Query) -> list[Term]:
    """The terms in index_form, split into words again: only letters, digits and marks
    are left (never a quote, a backslash or an operator); a term left without words is
    dropped."""
    terms = []
    for term in query.terms:
        folded = index_form(" ".join(term.words))
        words = tuple(folded[s:e] for s, e in _words(folded))
        if words:
            terms.append(Term(words, term.prefix))
    return terms


def _fts5_match(query: Query, owner_id: int | None = None) -> str:
    """The FTS5 MATCH expression: each term a quoted string, the last one a prefix when
    typed so, all required, in the text and name columns; with owner_id, only among that
    person's rows (the owner column's token, "o<id>"), so that the engine intersects with
    their messages instead of walking everyone's matches: how long a search takes then
    says little about how often other people use a word."""
    parts = []
    for term in _engine_terms(query):
        parts.append('"' + " ".join(term.words) + '"' + ("*" if term.prefix else ""))
    words = "{text name} : (" + " ".join(parts) + ")"
    return words if owner_id is None else f'{{owner}} : "o{int(owner_id)}" AND {words}'


def _tsquery(query: Query) -> str:
    """The PostgreSQL tsquery: words single-quoted, a phrase's words joined by <->, the
    last one :* when typed so, all joined by &."""
    parts = []
    for term in _engine_terms(query):
        words = [f"'{word}'" for word in term.words]
        if term.prefix:
            words[-1] += ":*"
        parts.append("(" + " <-> ".join(words) + ")")
    return " & ".join(parts)


def _matching_ids_sqlite(
    *, owner: User, query: Query, peer_username: str | None, before_id: int | None, limit: int
) -> list[int]:
    # CROSS JOIN keeps FTS5 the outer loop: it walks the owner's matches newest (highest
    # rowid) first and stops at `limit`; the message's owner is checked again by its
    # primary key. (With a plain JOIN SQLite may walk every message, running the MATCH
    # once per row.)
    sql = [
        "SELECT f.rowid FROM messaging_message_fts f CROSS JOIN messaging_message m",
        "ON m.id = f.rowid WHERE messaging_message_fts MATCH %s AND m.owner_id = %s",
    ]
    params: list = [_fts5_match(query, owner.pk), owner.pk]
    if peer_username is not None:
        sql.append("AND m.peer_username = %s")
        params.append(peer_username)
    if before_id is not None:
        sql.append("AND f.rowid < %s")
        params.append(before_id)
    sql.append("ORDER BY f.rowid DESC LIMIT %s")
    params.append(limit)
    with connection.cursor() as cursor:
        cursor.execute(" ".join(sql), params)
        return [row[0] for row in cursor.fetchall()]


def _matching_ids_postgres(
    *, owner: User, query: Query, peer_username: str | None, before_id: int | None, limit: int
) -> list[int]:
    from django.contrib.postgres.search import SearchQuery

    found = Message.objects.filter(
        owner=owner,
        search_entry__document=SearchQuery(_tsquery(query), search_type="raw", config="p2p_search"),
    )
    if peer_username is not None:
        found = found.filter(peer_username=peer_username)
    if before_id is not None:
        found = found.filter(id__lt=before_id)
    return list(found.order_by("-id").values_list("id", flat=True)[:limit])


@dataclass(frozen=True)
class Segment:
    text: str
    match: bool


@dataclass(frozen=True)
class Hit:
    message: Message
    excerpt: tuple[Segment, ...]  # of the text, or of the file's name when only it matched
    in_file_name: bool


@dataclass(frozen=True)
class SearchPage:
    query: Query
    hits: list[Hit]  # the most recently stored first
    older_cursor: int | None  # pass as ?before= for the next page


def excerpt(text: str, query: Query, width: int = EXCERPT_CHARS) -> tuple[Segment, ...]:
    """About width characters of text around its first matching word, cut at word
    boundaries ("…" where cut), as segments whose matching words are marked."""
    spans = _words(text)
    matching = [(s, e) for s, e in spans if query.matches(text[s:e])]
    if len(text) <= width:
        start, end = 0, len(text)
    else:
        first = matching[0][0] if matching else 0
        start = max(0, first - width // 3)
        end = min(len(text), start + width)
        start = max(0, min(start, end - width))
        # Cut at word boundaries: drop a word the window begins or ends inside; unless
        # that leaves nothing (one word wider than the window: Chinese, a long link).
        cut_start, cut_end = start, end
        for s, e in spans:
            if s < cut_start < e:
                cut_start = e
            if s < cut_end < e:
                cut_end = s
        if cut_end > cut_start:
            start, end = cut_start, cut_end
    segments: list[Segment] = []
    if start > 0:
        segments.append(Segment("…", False))
    cursor = start
    for s, e in matching:
        if s < start or e > end:
            continue
        if s > cursor:
            segments.append(Segment(text[cursor:s], False))
        segments.append(Segment(text[s:e], True))
        cursor = e
    if cursor < end:
        segments.append(Segment(text[cursor:end], False))
    if end < len(text):
        segments.append(Segment("…", False))
    return tuple(segments)


def search_messages(
    *,
    owner: User,
    text: str,
    peer_username: str | None = None,
    before_id: int | None = None,
    size: int = PAGE_SIZE,
) -> SearchPage:
    """owner's messages (sent or received) matching what they typed, the most recently
    stored first, size at a time: pass older_cursor back as before_id for the next page.
    peer_username narrows it to one conversation. Works on SQLite (FTS5) and PostgreSQL
    (full-text search); an empty query finds nothing."""
    query = parse_query(text)
    if not _engine_terms(query):
        return SearchPage(query=query, hits=[], older_cursor=None)
    matching_ids = (
        _matching_ids_postgres if connection.vendor == "postgresql" else _matching_ids_sqlite
    )
    ids = matching_ids(
        owner=owner,
        query=query,
        peer_username=peer_username,
        before_id=before_id,
        limit=size + 1,
    )
    older = ids[size - 1] if len(ids) > size else None
    ids = ids[:size]
    by_id = {
        m.id: m
        for m in Message.objects.filter(id__in=ids, owner=owner)
        .select_related("attachment")
        .defer("attachment__key", "attachment__preview")
    }
    hits = []
    for message_id in ids:
        message = by_id.get(message_id)
        if message is None:  # deleted since
            continue
        hits.append(_hit(message, query))
    return SearchPage(query=query, hits=hits, older_cursor=older)


def _hit(message: Message, query: Query) -> Hit:
    in_text = any(query.matches(message.text[s:e]) for s, e in _words(message.text))
    attachment = attachment_of(message)
    name = attachment.name if attachment is not None else ""
    if not in_text and name:
        return Hit(message=message, excerpt=excerpt(name, query), in_file_name=True)
    return Hit(message=message, excerpt=excerpt(message.text, query), in_file_name=False)
