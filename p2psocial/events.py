"""Live events: what the web and worker processes publish and the event stream relays.

Each person has a Redis stream of their own events, and the node has one stream of events
every person on it sees (presence changes). `publish` and `publish_all` append to them;
`GET /events/` (p2psocial/event_views.py) reads them for one logged-in person.

An event is small JSON, `{"kind": "message.status", "data": {"id": 42, ...}}`. It carries
ids and statuses only, never message text, file names or profile fields: the page fetches
what it shows over its existing JSON endpoints (messages.json), where access is checked,
so nothing a person wrote sits in Redis, which is shared with Celery and not encrypted.

Publishing is best effort: with Redis unavailable the event is logged and dropped, never
raised, since the database holds the truth and the page catches up by reloading.

A stream keeps its last EVENT_BACKLOG_EVENTS events (approximately) and vanishes
EVENT_BACKLOG_TTL_S after its last event. A reader's position is a Cursor, the string
`<epoch>:<personal id>,<node id>`: the two stream positions and the epoch of this Redis's
streams, which changes when Redis loses its data (restart without persistence, flush).
Resuming from a cursor delivers exactly the events after it, or says "reset" when some of
them may be gone (trimmed, expired, or lost with Redis), so the page reloads.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from dataclasses import dataclass, replace

import redis
import redis.asyncio
from django.conf import settings
from django.db import transaction

from . import redis_client

logger = logging.getLogger(__name__)

# An event is a few ids and statuses; anything larger is a misuse (content belongs in the
# JSON endpoints), refused where it is published.
EVENT_MAX_BYTES = 4096
# Kinds become the SSE `event:` line: a newline there would forge stream fields.
_KIND = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
# Kinds the stream itself sends (p2psocial/event_views.py): never published.
STREAM_KINDS = frozenset({"ready", "reset"})
_STREAM_ID = re.compile(r"(\d{1,20})-(\d{1,20})")
_CURSOR = re.compile(r"([0-9a-f]{16}):(\d{1,20}-\d{1,20}),(\d{1,20}-\d{1,20})")
_FIELD = b"e"  # the one field of a stream entry: the event's JSON


def _prefix() -> str:
    # One Redis may serve several nodes: everything is namespaced by this node's queue.
    return f"p2p:events:{settings.CELERY_TASK_DEFAULT_QUEUE}"


def person_key(user_id: int) -> str:
    return f"{_prefix()}:user:{int(user_id)}"


def node_key() -> str:
    return f"{_prefix()}:all"


def epoch_key() -> str:
    return f"{_prefix()}:epoch"


def encode(kind: str, data: dict) -> bytes:
    """The stored form of an event; ValueError for a kind or data the stream cannot carry."""
    if not _KIND.fullmatch(kind) or kind in STREAM_KINDS:
        raise ValueError(f"invalid event kind {kind!r}")
    if not isinstance(data, dict):
        raise ValueError("event data must be a dict")
    body = json.dumps({"kind": kind, "data": data}, separators=(",", ":")).encode()
    if len(body) > EVENT_MAX_BYTES:
        raise ValueError(f"event {kind} is {len(body)} bytes, over {EVENT_MAX_BYTES}")
    return body


def decode(body: bytes) -> tuple[str, dict] | None:
    """(kind, data) of a stored event, or None when it is not one `encode` wrote."""
    try:
        event = json.loads(body)
    except ValueError:
        return None
    if not isinstance(event, dict):
        return None
    kind, data = event.get("kind"), event.get("data")
    if not isinstance(kind, str) or not _KIND.fullmatch(kind) or not isinstance(data, dict):
        return None
    return kind, data


def _append(key: str, kind: str, data: dict) -> None:
    body = encode(kind, data)  # a bad event is the caller's bug: raised even with Redis down
    try:
        with redis_client.get().pipeline(transaction=False) as pipe:
            pipe.xadd(key, {_FIELD: body}, maxlen=settings.EVENT_BACKLOG_EVENTS, approximate=True)
            pipe.expire(key, int(settings.EVENT_BACKLOG_TTL_S))
            pipe.execute()
    except redis.RedisError as exc:
        logger.warning("event not published", extra={"kind": kind, "error": type(exc).__name__})


def publish(user_id: int, kind: str, data: dict) -> None:
    """Append an event to one person's stream. Never raises for Redis (logs instead)."""
    _append(person_key(user_id), kind, data)


def publish_all(kind: str, data: dict) -> None:
    """Append an event every person on this node sees. Never raises for Redis."""
    _append(node_key(), kind, data)


def publish_many(events: list[tuple[int, str, dict]]) -> None:
    """Append each (user_id, kind, data) to its person's stream in one round trip."""
    bodies = [(person_key(user_id), kind, encode(kind, data)) for user_id, kind, data in events]
    if not bodies:
        return
    try:
        with redis_client.get().pipeline(transaction=False) as pipe:
            for key, _, body in bodies:
                pipe.xadd(
                    key, {_FIELD: body}, maxlen=settings.EVENT_BACKLOG_EVENTS, approximate=True
                )
            for key in {key for key, _, _ in bodies}:
                pipe.expire(key, int(settings.EVENT_BACKLOG_TTL_S))
            pipe.execute()
    except redis.RedisError as exc:
        logger.warning(
            "events not published", extra={"count": len(bodies), "error": type(exc).__name__}
        )


def publish_many_on_commit(events: list[tuple[int, str, dict]]) -> None:
    """`publish_many` once the current transaction commits."""
    for _, kind, data in events:
        encode(kind, data)
    transaction.on_commit(lambda: publish_many(events))


def publish_on_commit(user_id: int, kind: str, data: dict) -> None:
    """`publish` once the current transaction commits (at once outside a transaction)."""
    encode(kind, data)  # refuse a bad event here, where the caller can see it
    transaction.on_commit(lambda: publish(user_id, kind, data))


def publish_all_on_commit(kind: str, data: dict) -> None:
    """`publish_all` once the current transaction commits (at once outside a transaction)."""
    encode(kind, data)
    transaction.on_commit(lambda: publish_all(kind, data))


# --- reading (the event stream, async) --------------------------------------------------

_ID_LIMIT = 2**64  # Redis stream ids are two unsigned 64-bit numbers


def _id(value: str | bytes) -> tuple[int, int]:
    text = value.decode() if isinstance(value, bytes) else value
    ms, seq = _STREAM_ID.fullmatch(text).groups()
    return int(ms), int(seq)


def _text(position: tuple[int, int]) -> str:
    return f"{position[0]}-{position[1]}"


@dataclass(frozen=True)
class Cursor:
    """Where a reader is in both streams: the last event it was given from each."""

    epoch: str
    personal: str
    node: str

    def __str__(self) -> str:
        return f"{self.epoch}:{self.personal},{self.node}"

    @classmethod
    def parse(cls, text: str) -> Cursor | None:
        """The cursor `str()` wrote, or None for anything else."""
        match = _CURSOR.fullmatch(text.strip())
        if not match or any(n >= _ID_LIMIT for s in match.groups()[1:] for n in _id(s)):
            return None
        return cls(*match.groups())


@dataclass(frozen=True)
class Event:
    cursor: Cursor  # the position just after this event
    kind: str
    data: dict


def connect() -> redis.asyncio.Redis:
    """A Redis client of its own for one open stream (its XREAD blocks the connection);
    the caller closes it with `await client.aclose()`."""
    return redis.asyncio.Redis.from_url(
        settings.REDIS_URL,
        socket_connect_timeout=2,
        socket_timeout=settings.EVENT_HEARTBEAT_S + 10,  # longer than one blocking read
    )


async def _epoch(client: redis.asyncio.Redis) -> str:
    """This Redis's epoch, created by the first reader after Redis lost its data."""
    await client.set(epoch_key(), secrets.token_hex(8), nx=True)
    value = await client.get(epoch_key())
    return value.decode() if value is not None else ""


async def resume(
    client: redis.asyncio.Redis, *, user_id: int, cursor: str | None
) -> tuple[Cursor, bool]:
    """Where to read from after `cursor` (None or empty: from now on), and whether the
    reader must reset: events after its cursor may be gone (trimmed, expired, lost with
    Redis), or the cursor is not one of ours. A reset reads from now on.

    Raises redis.RedisError when Redis does not answer.
    """
    epoch = await _epoch(client)
    async with client.pipeline(transaction=True) as pipe:  # the time and both streams at once
        pipe.time()
        for key in (person_key(user_id), node_key()):
            pipe.xlen(key)
            pipe.xrange(key, count=1)
            pipe.xrevrange(key, count=1)
        answers = await pipe.execute()
    seconds, micros = answers[0]
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    given = Cursor.parse(cursor) if cursor else None
    reset = bool(cursor) and (given is None or given.epoch != epoch)
    seen = [_id(given.personal), _id(given.node)] if given and not reset else [None, None]
    starts, positions = [], []
    for index, after in enumerate(seen):
        length, first, last = answers[1 + 3 * index : 4 + 3 * index]
        newest = _id(last[0][0]) if last else (0, 0)
        # A later entry gets an id of at least now_ms-0: from (now_ms - 1)-0 nothing is missed.
        start = max((now_ms - 1, 0), newest)
        starts.append(start)
        if after is None:
            positions.append(start)
            continue
        expired = after[0] < now_ms - settings.EVENT_BACKLOG_TTL_S * 1000
        # Only a full stream has been trimmed; its oldest entry then tells how far.
        trimmed = (
            length >= settings.EVENT_BACKLOG_EVENTS and bool(first) and _id(first[0][0]) > after
        )
        reset = reset or expired or trimmed
        # Nothing after the cursor: move it to now, so that a quiet stream's cursor never ages.
        positions.append(after if newest > after else max(after, start))
    if reset:
        positions = starts
    return Cursor(epoch, _text(positions[0]), _text(positions[1])), reset


async def read(
    client: redis.asyncio.Redis, *, user_id: int, cursor: Cursor, block_s: float
) -> tuple[list[Event], Cursor]:
    """The events after cursor in both streams, waiting up to block_s for one ([] when
    none came), and the cursor after them. Each stream's events come in the order they were
    published; the two streams are merged by millisecond (ids of different streams say
    nothing finer), the person's own first.

    Raises redis.RedisError when Redis does not answer.
    """
    keys = {person_key(user_id): "personal", node_key(): "node"}
    answer = await client.xread(
        {key: getattr(cursor, which) for key, which in keys.items()},
        count=100,
        block=max(1, int(block_s * 1000)),
    )
    entries = []
    for key, rows in answer or []:
        which = keys[key.decode() if isinstance(key, bytes) else key]
        entries += [(_id(entry_id), which, fields) for entry_id, fields in rows]
    events = []
    for position, which, fields in sorted(entries, key=lambda entry: entry[0][0]):
        cursor = replace(cursor, **{which: _text(position)})
        event = decode(fields.get(_FIELD, b""))
        if event is None:
            logger.warning("unreadable event skipped", extra={"stream": which})
            continue
        events.append(Event(cursor, *event))
    return events, cursor
