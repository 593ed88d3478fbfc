"""Reads about messages and delivery: conversation pages, polling, the conversations home,
unread counts, health figures."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Count, F, Min, Q, Window
from django.db.models.functions import RowNumber
from django.urls import reverse
from django.utils import timezone

from accounts.models import User
from accounts.queries import local_people
from peers.models import DirectoryUser
from peers.queries import directory_freshness

from .models import GROUP_KEY_PREFIX, Attachment, Group, GroupMember, Message, Outbox

PAGE_SIZE = 50
STATUS_WINDOW = 200  # how many of one's latest sent messages a poll reports statuses for


@dataclass(frozen=True)
class ConversationPage:
    messages: list[Message]  # oldest first, newest at the bottom
    older_cursor: int | None  # message id to pass as ?before= for the previous page


def _conversation(owner: User, peer_username: str):
    return Message.objects.filter(owner=owner, peer_username=peer_username).select_related(
        "attachment"
    )


def conversation_page(
    *, owner: User, peer_username: str, before_id: int | None = None, size: int = PAGE_SIZE
) -> ConversationPage:
    """One page of a conversation ordered by the sender's time then id, newest last."""
    messages = _conversation(owner, peer_username)
    if before_id is not None:
        anchor = messages.filter(id=before_id).values_list("created_ms", flat=True).first()
        if anchor is not None:
            messages = messages.filter(
                Q(created_ms__lt=anchor) | Q(created_ms=anchor, id__lt=before_id)
            )
    newest_first = list(
        messages.order_by("-created_ms", "-id").defer("sender_username", "recipient_username")[
            : size + 1
        ]
    )
    older = newest_first[size].id if len(newest_first) > size else None
    page = newest_first[:size]
    page.reverse()
    return ConversationPage(messages=page, older_cursor=page[0].id if older and page else None)


AROUND = 10  # messages shown on each side of a found one


def conversation_around(
    *, owner: User, peer_username: str, message_id: int, size: int = AROUND
) -> ConversationPage | None:
    """The page of a conversation centred on message_id (a search result): up to size
    messages before it and size after, in conversation_page's order; None when it is not
    a message of owner's conversation with peer. older_cursor pages back from there."""
    position = conversation_position(
        owner=owner, peer_username=peer_username, message_id=message_id
    )
    if position is None:
        return None
    created_ms, anchor_id = position
    messages = _conversation(owner, peer_username).defer("sender_username", "recipient_username")
    later = Q(created_ms__gt=created_ms) | Q(created_ms=created_ms, id__gt=anchor_id)
    older = list(messages.exclude(later).order_by("-created_ms", "-id")[: size + 2])
    newer = list(messages.filter(later).order_by("created_ms", "id")[:size])
    has_older = len(older) > size + 1
    older = older[: size + 1]
    older.reverse()
    page = older + newer
    return ConversationPage(messages=page, older_cursor=page[0].id if has_older else None)


def conversation_position(
    *, owner: User, peer_username: str, message_id: int
) -> tuple[int, int] | None:
    """Where message_id stands in owner's conversation with peer, as (created_ms, id), the
    order of conversation_page; None when it is not a message of that conversation."""
    row = (
        _conversation(owner, peer_username)
        .filter(id=message_id)
        .values_list("created_ms", "id")
        .first()
    )
    return None if row is None else (row[0], row[1])


def unread_message_ids(*, owner: User, peer_username: str, limit: int = 500) -> list[int]:
    """The newest received messages of a conversation that owner has not read yet (ids),
    so that a page can tell which of the messages it shows are still unread."""
    return list(
        _conversation(owner, peer_username)
        .filter(direction=Message.Direction.IN, read_at__isnull=True)
        .order_by("-id")
        .values_list("id", flat=True)[:limit]
    )


def messages_after(*, owner: User, peer_username: str, after_id: int, limit: int = 200) -> list:
    """Messages of a conversation stored after the row after_id, in arrival order."""
    return list(_conversation(owner, peer_username).filter(id__gt=after_id).order_by("id")[:limit])


def recent_statuses(*, owner: User, peer_username: str) -> dict[int, str]:
    """The status of one's latest sent messages in a conversation, by message id."""
    rows = (
        _conversation(owner, peer_username)
        .filter(direction=Message.Direction.OUT)
        .order_by("-id")
        .values_list("id", "status")[:STATUS_WINDOW]
    )
    return dict(rows)


def has_unread(*, owner: User, peer_username: str) -> bool:
    return (
        _conversation(owner, peer_username)
        .filter(direction=Message.Direction.IN, read_at__isnull=True)
        .exists()
    )


def message_json(message: Message) -> dict[str, Any]:
    return {
        "id": message.id,
        "envelope_id": str(message.envelope_id),
        "direction": message.direction,
        "text": message.text,
        "created_ms": message.created_ms,
        "status": message.status,
        "error": message.error,
        "file": file_json(message),
    }


def attachment_of(message: Message) -> Attachment | None:
    try:
        return message.attachment
    except Attachment.DoesNotExist:
        return None


def file_json(message: Message) -> dict[str, Any] | None:
    """What a page shows of a message's file: its kind, name, size, whether this node
    holds it (state) and where to get it and its preview."""
    attachment = attachment_of(message)
    if attachment is None:
        return None
    file_id = str(attachment.file_id)
    return {
        "id": file_id,
        "name": attachment.name,
        "mime": attachment.mime,
        "kind": attachment.kind,
        "size": attachment.size,
        "state": attachment.state,
        "error": attachment.error,
        "url": reverse("messaging:file", args=[file_id]),
        "preview_url": (
            reverse("messaging:file_preview", args=[file_id]) if attachment.preview else None
        ),
    }


def file_of(*, owner: User, file_id: str) -> Attachment | None:
    """owner's attachment file_id (sent or received), or None: nobody else's."""
    return (
        Attachment.objects.filter(file_id=file_id, message__owner=owner)
        .select_related("message")
        .first()
    )


# --- the conversation page's bubbles ------------------------------------------------------
RENDER_MAX_IDS = 100  # bubbles one poll may ask to have drawn again

# Why a received file could not be had, in words, by the code its pull failed with.
_FILE_FAILURES = {
    "file_expired": "it did not arrive in time",
    "file_not_found": "the sender's office no longer has it",
    "unknown_node": "the sender's office is not known here",
    "file_type_mismatch": "it is not the kind of file it was announced as",
    "file_too_long": "it is longer than announced",
    "file_truncated": "it arrived incomplete",
    "file_length": "it is not the size it was announced as",
    "file_hash": "it is not the file that was sent",
    "file_tampered": "it was damaged on the way",
    "file_bad_header": "it was damaged on the way",
    "file_trailing_bytes": "it was damaged on the way",
}


def file_failure_reason(code: str) -> str:
    """Why a file could not be received, for the person: words for a known code, else
    the code itself."""
    return _FILE_FAILURES.get(code, code or "unknown reason")


def message_bubble(message: Message) -> dict[str, Any]:
    """What templates/messaging/_message.html draws of a message: the message, its file
    (file_json) and, for a file that could not be received, why."""
    file = file_json(message)
    failed = file is not None and file["state"] == Attachment.State.FAILED
    return {
        "m": message,
        "file": file,
        "file_reason": file_failure_reason(file["error"]) if failed else "",
    }


def messages_by_id(*, owner: User, peer_username: str, ids: list[int]) -> list[Message]:
    """Those of the messages ids that belong to owner's conversation with peer."""
    return list(_conversation(owner, peer_username).filter(id__in=ids[:RENDER_MAX_IDS]))


def recent_file_states(*, owner: User, peer_username: str) -> dict[int, str]:
    """The state of the files of a conversation's latest messages with one (pending,
    stored, failed), by message id: a page draws a file again once its state changes."""
    rows = (
        _conversation(owner, peer_username)
        .filter(attachment__isnull=False)
        .order_by("-id")
        .values_list("id", "attachment__state")[:STATUS_WINDOW]
    )
    return dict(rows)


# --- the conversations home and unread counts ---------------------------------------------
CONVERSATIONS_MAX = 200  # the home lists the latest this many conversations
PREVIEW_MAX_CHARS = 80

# What the home says a file is, by attachment kind (messaging.content).
_FILE_KINDS = {"image": "Photo", "video": "Video", "audio": "Audio", "pdf": "PDF"}


def unread_counts(*, owner: User) -> dict[str, int]:
    """How many received messages owner has not read, by conversation (peer username);
    conversations with none are left out. One grouped query on the message_unread index."""
    rows = (
        Message.objects.filter(owner=owner, direction=Message.Direction.IN, read_at__isnull=True)
        .values_list("peer_username")
        .annotate(unread=Count("id"))
        .order_by()
    )
    return dict(rows)


def latest_messages(*, owner: User, limit: int = CONVERSATIONS_MAX) -> list[Message]:
    """The last message of each of owner's conversations (the one at the bottom of its
    page: conversation_page's order), the most recent conversation first; one query."""
    last_of_each = (
        Message.objects.filter(owner=owner)
        .annotate(
            rank=Window(
                RowNumber(),
                partition_by=[F("peer_username")],
                order_by=[F("created_ms").desc(), F("id").desc()],
            )
        )
        .filter(rank=1)
        .values("id")
    )
    return list(
        Message.objects.filter(id__in=last_of_each)
        .select_related("attachment")
        .defer("sender_username", "recipient_username", "attachment__key", "attachment__preview")
        .order_by("-created_ms", "-id")[:limit]
    )


def message_preview(message: Message) -> tuple[str, bool]:
    """What the home shows of a message, as plain text, and whether it is a file: its
    first line that is not blank, or a file's kind and name; cut to PREVIEW_MAX_CHARS."""
    attachment = attachment_of(message)
    if attachment is not None:
        text = f"{_FILE_KINDS.get(attachment.kind, 'File')}: {attachment.name}"
    else:
        text = next((line.strip() for line in message.text.splitlines() if line.strip()), "")
    if len(text) > PREVIEW_MAX_CHARS:
        text = text[: PREVIEW_MAX_CHARS - 1].rstrip() + "…"
    return text, attachment is not None


@dataclass(frozen=True)
class Person:
    """The other person of a conversation as the home shows them."""

    name: str  # the full name, else the username
    office: str  # node name; "" when this node no longer knows them
    status: str  # online / away / offline / unknown, as the users list shows it


def people(usernames: list[str]) -> dict[str, Person]:
    """Name, office and presence of each of usernames, by username: a person of this node
    by their profile, anyone else by the directory; status from the directory as the users
    list shows it ("unknown" while the directory is stale). Three queries, however many."""
    local = dict(local_people(usernames).values_list("username", "profile__full_name"))
    listed = {
        row[0]: row[1:]
        for row in DirectoryUser.objects.filter(username__in=usernames).values_list(
            "username", "full_name", "status", "node__name", "listed", "node__active"
        )
    }
    stale = directory_freshness().stale
    result = {}
    for username in usernames:
        full_name, status, node, is_listed, node_active = listed.get(
            username, ("", "unknown", "", False, False)
        )
        if not (is_listed and node_active) or stale:
            status = "unknown"
        if username in local:
            # A person of this node is who messages in this name reach (as on their
            # profile): their own name and office, whatever another node claims.
            here = settings.NODE_NAME or node
            if node != here:
                status = "unknown"
            full_name, node = local[username] or "", here
        result[username] = Person(name=full_name or username, office=node, status=status)
    return result


@dataclass(frozen=True)
class ConversationRow:
    """One row of the conversations home (templates/messaging/_conversation_row.html)."""

    username: str
    person: Person
    preview: str  # plain text: the template escapes it
    is_file: bool
    is_own: bool  # the last message is one's own
    created_ms: int  # the sender's clock: the page shows it in the reader's time zone
    stored_at: datetime  # shown without JavaScript, as on a message bubble
    unread: int
    url: str = ""  # the conversation's page
    is_group: bool = False


@dataclass(frozen=True)
class ConversationList:
    rows: list[ConversationRow]
    total_unread: int  # over every conversation, listed or not
    capped: bool  # there are more conversations than the list shows


def conversation_list(*, owner: User, limit: int = CONVERSATIONS_MAX) -> ConversationList:
    """owner's conversations, the most recent first, each with the other person, the last
    message and the unread count; a fixed number of queries however many there are."""
    latest = latest_messages(owner=owner, limit=limit + 1)
    capped = len(latest) > limit
    latest = latest[:limit]
    unread = unread_counts(owner=owner)
    keys = [m.peer_username for m in latest]
    who = people([k for k in keys if not k.startswith(GROUP_KEY_PREFIX)])
    groups = _groups_of(owner, keys)
    rows = []
    for message in latest:
        key = message.peer_username
        group = groups.pop(key, None)
        if group is None and key.startswith(GROUP_KEY_PREFIX):
            continue  # a group this node no longer has (not one of the person's)
        preview, is_file = message_preview(message)
        if group is not None and message.direction == Message.Direction.IN:
            preview = f"{message.sender_username}: {preview}"
        rows.append(
            ConversationRow(
                username=key,
                person=group[0] if group else who[key],
                preview=preview,
                is_file=is_file,
                is_own=message.direction == Message.Direction.OUT,
                created_ms=message.created_ms,
                stored_at=message.stored_at,
                unread=unread.get(key, 0),
                url=group[1] if group else reverse("messaging:conversation", args=[key]),
                is_group=group is not None,
            )
        )
    for key, (person, url, created) in groups.items():  # groups without a message yet
        if len(rows) >= limit:
            break
        rows.append(
            ConversationRow(
                username=key,
                person=person,
                preview="No messages yet",
                is_file=False,
                is_own=False,
                created_ms=int(created.timestamp() * 1000),
                stored_at=created,
                unread=0,
                url=url,
                is_group=True,
            )
        )
    return ConversationList(rows=rows, total_unread=sum(unread.values()), capped=capped)


def conversations_named(owner: User, keys: list[str]) -> dict[str, tuple[Person, str]]:
    """Who (or which group) each conversation key is, and its page's address."""
    who = people([k for k in keys if not k.startswith(GROUP_KEY_PREFIX)])
    result = {k: (p, reverse("messaging:conversation", args=[k])) for k, p in who.items()}
    for key, (person, url, _) in _groups_of(owner, keys).items():
        if key in keys:
            result[key] = (person, url)
    for key in keys:  # a group this node does not have
        result.setdefault(key, (Person(name="a former group", office="", status="unknown"), ""))
    return result


def _groups_of(owner: User, keys: list[str]) -> dict[str, tuple[Person, str, datetime]]:
    """The groups of owner's conversations (and those they are in without messages), as
    the home lists them: name, members, page address."""
    from peers.client import local_identity
    from peers.identity import NotJoined

    try:
        here = local_identity().name
    except NotJoined:
        return {}
    mine = GroupMember.objects.filter(
        username=owner.username, node=here, left_seq__isnull=True
    ).values("group_id")
    wanted = [k[len(GROUP_KEY_PREFIX) :] for k in keys if k.startswith(GROUP_KEY_PREFIX)]
    rows = (
        Group.objects.filter(Q(id__in=mine) | Q(group_id__in=wanted))
        .annotate(
            size=Count("members", filter=Q(members__left_seq__isnull=True)),
            mine=Count(
                "members",
                filter=Q(
                    members__left_seq__isnull=True,
                    members__username=owner.username,
                    members__node=here,
                ),
            ),
        )
        .order_by("-id")
    )
    return {
        g.conversation_key: (
            Person(
                name=g.name,
                # A former member is not shown who is in it now.
                office=f"group · {g.size} members" if g.mine else "group · you left",
                status="group",
            ),
            reverse("messaging:group", args=[g.group_id]),
            g.created_at,
        )
        for g in rows
    }


def delivery_health() -> dict[str, Any]:
    """Figures for /health: outbox depth, age of the oldest undelivered envelope, failures."""
    pending = Outbox.objects.filter(failed_at__isnull=True)
    oldest = pending.aggregate(oldest=Min("queued_at"))["oldest"]
    return {
        "outbox_queued": pending.count(),
        "outbox_oldest_age_s": (
            round((timezone.now() - oldest).total_seconds(), 1) if oldest else None
        ),
        "messages_failed": Message.objects.filter(status=Message.Status.FAILED).count(),
    }


@dataclass(frozen=True)
class Address:
    node: str | None  # None: an active person of this node
    box_key: bytes
    record: bytes | None  # the login server's record of a person of another node


# Every send resolves its recipient: one plain statement instead of two ORM queries (the
# ORM's query building costs ten times the SQLite lookup itself). Same filters as
# peers.directory.lookup: a listed person of an active node; this node's people first.
_ADDRESS_SQL = """
    SELECT 0, NULL, k.box_public, NULL
      FROM accounts_userkeys k JOIN accounts_user u ON u.id = k.user_id
     WHERE u.username = %s AND u.is_active
    UNION ALL
    SELECT 1, n.name, d.box_key, d.record
      FROM peers_directoryuser d JOIN peers_peernode n ON n.id = d.node_id
     WHERE d.username = %s AND d.listed AND n.active
    ORDER BY 1
    LIMIT 1
"""


def recipient_address(username: str) -> Address | None:
    """Where username lives and their public box key, or None when nobody has that name."""
    with connection.cursor() as cursor:
        cursor.execute(_ADDRESS_SQL, [username, username])
        row = cursor.fetchone()
    if row is None:
        return None
    return Address(row[1], bytes(row[2]), None if row[3] is None else bytes(row[3]))
