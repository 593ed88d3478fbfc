"""What a person's open pages learn at once about their conversations (p2psocial.events).

One event per person and conversation touched by a write, after it commits: the other
person's name and the ids of the messages that changed, never their content. The page
then reads what it shows through messages.json, where access is checked.

Kinds: "conversation.new" (a message arrived, or one was sent from another tab),
"conversation.status" (queued, sent, delivered, read or failed), "conversation.file" (a
received file is now held, or was refused), "conversation.read" (the person read
messages, in another tab: unread counts change).
"""

from __future__ import annotations

from collections.abc import Iterable

from p2psocial import events

from .models import Message

MAX_IDS_PER_EVENT = 100  # an event stays far below events.EVENT_MAX_BYTES


Owners = dict[int, tuple[int, str]]  # message id: (owner id, the other person)


def owners(message_ids: Iterable[int]) -> Owners:
    """Whose conversation each message is in: read before a write lock is taken."""
    ids = list(message_ids)
    if not ids:
        return {}
    rows = Message.objects.filter(id__in=ids).values_list("id", "owner_id", "peer_username")
    return {message_id: (owner_id, peer) for message_id, owner_id, peer in rows}


def announce(message_ids: Iterable[int], change: str, *, known: Owners | None = None) -> None:
    """After the current transaction commits, tell the owners of these messages. Inside
    the writer lock, pass known (from owners(), read before): no query is made then."""
    ids = [i for i in message_ids if i]
    if not ids:
        return
    if known is None:
        known = owners(ids)
    by_conversation: dict[tuple[int, str], list[int]] = {}
    for message_id in ids:
        if message_id in known:
            by_conversation.setdefault(known[message_id], []).append(message_id)
    batch = []
    for (owner_id, peer), changed in by_conversation.items():
        changed = sorted(set(changed))
        for start in range(0, len(changed), MAX_IDS_PER_EVENT):
            chunk = changed[start : start + MAX_IDS_PER_EVENT]
            batch.append((owner_id, f"conversation.{change}", {"peer": peer, "ids": chunk}))
    events.publish_many_on_commit(batch)


def announce_read(*, owner_id: int, peer: str) -> None:
    """The person read (some of) this conversation: their other tabs' counts change."""
    events.publish_on_commit(owner_id, "conversation.read", {"peer": peer, "ids": []})
