"""Reads about messages and delivery: conversation pages, polling, health figures."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import connection
from django.db.models import Min, Q
from django.urls import reverse
from django.utils import timezone

from accounts.models import User

from .models import Attachment, Message, Outbox

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
