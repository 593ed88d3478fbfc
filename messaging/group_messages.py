"""Group messages on a node: sending one (its content encrypted once, one envelope per
node of its recipients), its per-recipient delivery and read state, sealing it again,
Retry for one member, read receipts, and checking those that arrive.

Membership (who may send, who receives, the order of changes) is messaging.groups',
which this module calls; receiving, delivery and sending call this one.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Iterable
from typing import Any

from django.db.models import Count, Q
from django.utils import timezone

from accounts.keys import box_key_for, signing_key_for
from accounts.models import User, UserKeys
from peers import groups as wire
from peers import protocol
from peers.auth import write_transaction

from . import errors, files, live, queries
from .content import FileFields, check_message_payload, validate_caption, validate_text
from .groups import GroupError, Staged, head_at, load_state, member_at, removed_before
from .models import (
    Attachment,
    Group,
    GroupDelivery,
    GroupMember,
    Message,
    Outbox,
    group_conversation_key,
)
from .outbox import local_node_name, now_ms, outbox_row, resolve_recipient, schedule_delivery

logger = logging.getLogger(__name__)

GROUP_ROW_KINDS = ("group_message",)  # outbox rows that carry a group message


# --- messages sent from here ---------------------------------------------------------------
class _TooLarge(Exception):
    """An envelope would pass MAX_ENVELOPE_BYTES."""


def seal_for_nodes(
    *,
    sender: User,
    group: Group,
    message_id: str,
    at_seq: int,
    created_ms: int,
    payload: dict[str, Any],
    by_node: dict[str, list[str]],
    head: str | None = None,
    envelope_ids: dict[str, str] | None = None,
) -> tuple[list[Outbox], dict[str, str]]:
    """One envelope per node, the content encrypted once, its key sealed to each
    recipient there with their current key. Returns (outbox rows, {username: error})
    for the recipients nobody can seal to now (not in the directory, or expired)."""
    local_name = local_node_name()
    keys: dict[str, bytes] = {}
    unreachable: dict[str, str] = {}
    for node, usernames in by_node.items():
        for username in usernames:
            try:
                recipient = resolve_recipient(username, local_name=local_name)
            except errors.UnknownRecipient:
                unreachable[username] = "unknown_recipient"
                continue
            except errors.RecipientRecordExpired:
                unreachable[username] = "record_expired"
                continue
            if recipient.node != node:
                unreachable[username] = "moved"
                continue
            keys[username] = recipient.box_key
    sealed_content = wire.seal_content(
        payload, sender_box_key=box_key_for(sender.keys), recipient_box_keys=keys
    )
    sign_key = signing_key_for(sender.keys)
    rows = []
    for node, usernames in sorted(by_node.items()):
        wraps = {u: sealed_content.wraps[u] for u in usernames if u in sealed_content.wraps}
        if not wraps:
            continue
        envelope_id = (envelope_ids or {}).get(node) or protocol.new_envelope_id()
        sealed = protocol.sign_group_envelope(
            sign_key,
            envelope_id=envelope_id,
            kind="group_message",
            sender=sender.username,
            sender_node=local_name,
            recipient_node=node,
            created_ms=created_ms,
            body=wire.message_body(
                group=str(group.group_id),
                message=message_id,
                at_seq=at_seq,
                head=head or head_at(group, at_seq) or "",
                ciphertext=sealed_content.ciphertext,
                wraps=wraps,
            ),
        )
        if len(sealed.raw) > protocol.MAX_ENVELOPE_BYTES:
            raise _TooLarge
        rows.append(
            outbox_row(sealed, envelope_id=envelope_id, kind="group_message", destination=node)
        )
    return rows, unreachable


def send_group_message(
    *, sender: User, group: Group, text: str, upload: files.Upload | None = None
) -> Message:
    """Store the message (with the uploaded file, if any) for its sender and one envelope
    per recipients' node in the outbox, with a delivery row per recipient; delivery starts
    on commit. Each recipient's node pulls the file from here once. An upload that cannot
    be sent is removed."""
    try:
        return _send(sender, group, text, upload)
    except BaseException:
        if upload is not None and not Attachment.objects.filter(file_id=upload.file_id).exists():
            upload.discard()  # no orphan file: the message was not stored
        raise


def _send(sender: User, group: Group, text: str, upload: files.Upload | None) -> Message:
    text = validate_caption(text) if upload is not None else validate_text(text)
    group = Group.objects.get(id=group.id)
    state = load_state(group)
    if sender.username not in state.members:
        raise GroupError("You are not a member of this group any more.")
    by_node = wire.recipients(state, sender=sender.username)
    if not by_node:
        raise GroupError("You are the only member of this group.")
    message_id = str(uuid.uuid4())
    created_ms = now_ms()
    rows, unreachable = [], {}
    # A file's preview goes along when the envelopes have room for it.
    for with_preview in (True, False) if upload is not None else (False,):
        payload: dict[str, Any] = {"text": text}
        if upload is not None:
            payload["file"] = upload.fields(with_preview=with_preview).as_payload()
        try:
            rows, unreachable = seal_for_nodes(
                sender=sender,
                group=group,
                message_id=message_id,
                at_seq=state.seq,
                created_ms=created_ms,
                payload=payload,
                by_node=by_node,
            )
            break
        except _TooLarge:
            if not with_preview:
                raise GroupError("This message is too long for a group of this size.") from None
    with write_transaction():
        message = Message.objects.create(
            envelope_id=message_id,
            kind="message",
            owner=sender,
            peer_username=group.conversation_key,
            sender_username=sender.username,
            recipient_username="",
            direction=Message.Direction.OUT,
            text=text,
            created_ms=created_ms,
            status=Message.Status.QUEUED,
            group=group,
            group_message_id=uuid.UUID(message_id),
        )
        if upload is not None:
            # node "": the nodes of its recipients may pull it (peer_api.file_blob).
            files.attachment_for(message, upload.fields(), node="", held=True).save()
        GroupDelivery.objects.bulk_create(
            [
                GroupDelivery(
                    message=message,
                    username=username,
                    node=node,
                    error=unreachable.get(username, ""),
                )
                for node, usernames in by_node.items()
                for username in usernames
            ]
        )
        for row in rows:
            row.message = message
        Outbox.objects.bulk_create(rows)
        for row in rows:
            schedule_delivery(row.destination)
        if unreachable:  # failed for them from the start: Retry once they are listed
            _settle([message.id], now=timezone.now())
        live.announce([message.id], "new", known={message.id: (sender.pk, message.peer_username)})
    message.refresh_from_db(fields=["status", "error"])
    return message


def _payload(message: Message, *, with_preview: bool = True) -> dict[str, Any]:
    """The payload of one's group message as it is sealed (again)."""
    payload: dict[str, Any] = {"text": message.text}
    attachment = Attachment.objects.filter(message=message).first()
    if attachment is not None:
        fields = files.file_fields(attachment)
        if not with_preview:
            fields = dataclasses.replace(fields, preview=None)
        payload["file"] = fields.as_payload()
    return payload


def delivery_summary(message_ids: Iterable[int]) -> dict[int, dict[str, int]]:
    """For the sender's messages: how many recipients, delivered, read, failed."""
    rows = (
        GroupDelivery.objects.filter(message_id__in=list(message_ids))
        .values("message_id")
        .annotate(
            total=Count("id"),
            delivered=Count("id", filter=Q(delivered_at__isnull=False)),
            read=Count("id", filter=Q(read_at__isnull=False)),
            failed=Count("id", filter=~Q(error="") & Q(delivered_at__isnull=True)),
        )
    )
    return {r.pop("message_id"): r for r in rows}


def _settle(message_ids: Iterable[int], *, now) -> None:
    """The sender's message status from its recipients' rows: delivered once every one
    is, read once every one read it, failed while one failed, else queued. Call inside
    the transaction that changed those rows: the messages are locked first (PostgreSQL;
    SQLite has one writer), so two acknowledgements at once, each from one office, cannot
    both count without the other's recipients and leave the message queued for good."""
    ids = sorted(set(message_ids))
    list(Message.objects.select_for_update().filter(id__in=ids).values_list("id", flat=True))
    summary = delivery_summary(ids)
    for message_id, s in summary.items():
        if s["read"] == s["total"]:
            status = Message.Status.READ
        elif s["delivered"] == s["total"]:
            status = Message.Status.DELIVERED
        elif s["failed"]:
            status = Message.Status.FAILED
        else:
            status = Message.Status.QUEUED  # "delivered to n of m" says how far it got
        Message.objects.filter(id=message_id).exclude(status=status).update(
            status=status, error="recipient_failed" if status == Message.Status.FAILED else ""
        )


def _wrapped(row: Outbox) -> list[str]:
    """The recipients a group_message outbox row carries the key to."""
    envelope = protocol.parse_envelope(bytes(row.raw))
    return sorted(wire.parse_message_body(envelope.body).wraps)


def acknowledged(rows: list[Outbox], *, now) -> None:
    """Their nodes acknowledged these group_message envelopes: each recipient the
    envelope carries has it (in the delivery's write transaction)."""
    for row in rows:
        GroupDelivery.objects.filter(message_id=row.message_id, username__in=_wrapped(row)).update(
            delivered_at=now, error=""
        )
    _settle({r.message_id for r in rows}, now=now)


def refused(rows: list[Outbox], code: str, *, now) -> None:
    """Their nodes refused these group_message envelopes for good (or they expired)."""
    for row in rows:
        GroupDelivery.objects.filter(
            message_id=row.message_id, username__in=_wrapped(row), delivered_at__isnull=True
        ).update(error=code[:64])
    _settle({r.message_id for r in rows}, now=now)


def reseal(rows: list[Outbox], *, now, keep_earlier: bool = False) -> list[Outbox]:
    """Seal these group_message envelopes again (same ids, time, text and at_seq) with
    their sender's current keys, for their recipients' current keys. Inside a
    transaction; returns the rows resealed."""
    resealed = []
    for row in rows:
        message = (
            Message.objects.filter(id=row.message_id).select_related("owner__keys", "group").first()
        )
        if message is None or message.group is None:
            continue
        envelope = protocol.parse_envelope(bytes(row.raw))
        body = wire.parse_message_body(envelope.body)
        new_rows, unreachable = [], {}
        for with_preview in (True, False):
            try:
                new_rows, unreachable = seal_for_nodes(
                    sender=message.owner,
                    group=message.group,
                    message_id=str(message.group_message_id),
                    at_seq=body.at_seq,
                    created_ms=message.created_ms,
                    payload=_payload(message, with_preview=with_preview),
                    by_node={row.destination: sorted(body.wraps)},
                    envelope_ids={row.destination: str(row.envelope_id)},
                    head=body.head,
                )
                break
            except _TooLarge:
                continue
        for code in set(unreachable.values()):
            # Nobody can seal to them now (gone from the directory, expired, moved): they
            # show failed, with Retry, instead of waiting for nothing.
            GroupDelivery.objects.filter(
                message=message,
                username__in=[u for u, c in unreachable.items() if c == code],
                delivered_at__isnull=True,
            ).update(error=code)
        if unreachable:
            _settle([message.id], now=now)
        if not new_rows:
            Outbox.objects.filter(id=row.id).update(failed_at=now, last_error="unreachable")
            continue
        if keep_earlier:
            row.earlier_sealings = [*row.earlier_sealings, protocol.b64e(bytes(row.raw))]
        row.raw, row.signature = new_rows[0].raw, new_rows[0].signature
        row.next_attempt_at = now
        row.save(update_fields=["raw", "signature", "next_attempt_at", "earlier_sealings"])
        resealed.append(row)
    return resealed


def retry_member(*, owner: User, message_id: int, username: str) -> None:
    """Send a failed group message again to one of its recipients: their node's envelope
    queued again, or, for someone nobody could seal it to when it was sent (not in the
    directory then), a new envelope for them alone."""
    delivery = (
        GroupDelivery.objects.filter(
            message__id=message_id,
            message__owner=owner,
            message__direction=Message.Direction.OUT,
            username=username,
            delivered_at__isnull=True,
        )
        .select_related("message__group", "message__owner__keys")
        .first()
    )
    if delivery is None or not delivery.error:
        raise errors.NotRetryable("Only a failed delivery can be sent again.")
    rows = Outbox.objects.filter(message_id=message_id, destination=delivery.node)
    carrying = next((r for r in rows if username in _wrapped(r)), None)
    fresh = None
    if carrying is None:
        message = delivery.message
        # The change it was written at, as its other envelopes say (they are kept while
        # waiting or failed); else the group's current one.
        others = Outbox.objects.filter(message_id=message_id, kind="group_message").first()
        at_seq = (
            wire.parse_message_body(protocol.parse_envelope(bytes(others.raw)).body).at_seq
            if others is not None
            else message.group.seq
        )
        fresh, unreachable = seal_for_nodes(
            sender=owner,
            group=message.group,
            message_id=str(message.group_message_id),
            at_seq=at_seq,
            created_ms=message.created_ms,
            payload=_payload(message, with_preview=False),
            by_node={delivery.node: [username]},
        )
        if not fresh:
            raise errors.NotRetryable(
                f"{username} still cannot be reached safely ({unreachable.get(username)}); "
                "try again later."
            )
    now = timezone.now()
    with write_transaction():
        # Checked again under the lock: a second click meanwhile sent it already.
        still_failed = GroupDelivery.objects.filter(
            id=delivery.id, delivered_at__isnull=True
        ).exclude(error="")
        if not still_failed.exists():
            raise errors.NotRetryable("This message is on its way again already.")
        if carrying is not None:
            Outbox.objects.filter(id=carrying.id).update(
                failed_at=None, queued_at=now, next_attempt_at=now, attempts=0, last_error=""
            )
            again = _wrapped(carrying)
        else:
            fresh[0].message_id = message_id
            fresh[0].save()
            again = [username]
        GroupDelivery.objects.filter(
            message_id=message_id, username__in=again, delivered_at__isnull=True
        ).update(error="")
        _settle([message_id], now=now)
        schedule_delivery(delivery.node)
        live.announce([message_id], "status")


def mark_group_read(*, viewer: User, group: Group, up_to_id: int | None = None) -> int:
    """Mark the viewer's unread messages of the group read, in conversation order up to
    their message up_to_id (all when None), and queue a group_read receipt to each
    author's node. Returns how many became read."""
    unread_rows = Message.objects.filter(
        owner=viewer,
        peer_username=group.conversation_key,
        direction=Message.Direction.IN,
        read_at__isnull=True,
    )
    if up_to_id is not None:
        anchor = queries.conversation_position(
            owner=viewer, peer_username=group.conversation_key, message_id=up_to_id
        )
        if anchor is None:
            return 0
        created_ms, anchor_id = anchor
        unread_rows = unread_rows.filter(
            Q(created_ms__lt=created_ms) | Q(created_ms=created_ms, id__lte=anchor_id)
        )
    unread = list(unread_rows.values_list("id", "sender_username", "group_message_id"))
    if not unread:
        return 0
    local_name = local_node_name()
    by_author: dict[str, list[str]] = {}
    for _, author, message_id in unread:
        by_author.setdefault(author, []).append(str(message_id))
    members = {m.username: m.node for m in GroupMember.objects.filter(group=group)}
    sign_key = signing_key_for(viewer.keys)
    rows = []
    for author, ids in sorted(by_author.items()):
        node = members.get(author)
        if node is None:
            continue
        for start in range(0, len(ids), wire.MAX_READ_IDS):
            envelope_id = protocol.new_envelope_id()
            sealed = protocol.sign_group_envelope(
                sign_key,
                envelope_id=envelope_id,
                kind="group_read",
                sender=viewer.username,
                sender_node=local_name,
                recipient_node=node,
                created_ms=now_ms(),
                body=wire.read_body(
                    group=str(group.group_id),
                    author=author,
                    ids=ids[start : start + wire.MAX_READ_IDS],
                ),
            )
            rows.append(
                outbox_row(sealed, envelope_id=envelope_id, kind="group_read", destination=node)
            )
    now = timezone.now()
    with write_transaction():
        count = Message.objects.filter(
            id__in=[i for i, _, _ in unread], read_at__isnull=True
        ).update(read_at=now, status=Message.Status.READ)
        if count:
            Outbox.objects.bulk_create(rows)
            for node in sorted({r.destination for r in rows}):
                schedule_delivery(node)
    if count:
        live.announce_read(owner_id=viewer.pk, peer=group.conversation_key)
    return count


def check_message(
    staged: Staged,
    envelope: protocol.Envelope,
    *,
    sender_box_key: bytes,
) -> tuple[list[Message], FileFields | None]:
    """A group message for people of this node: from a member (at the change it was
    written at, and still), to members of this node at that change, opened for each.
    Returns the copies to store, one per recipient, and the file they all get (pulled
    once from the sender's node)."""
    body = wire.parse_message_body(envelope.body)
    group, state = staged.state(body.group)
    if state is None:
        raise protocol.ProtocolError("group_behind", "this node does not know the group yet", 409)
    wire.check_message(
        state, sender=envelope.sender, sender_node=envelope.sender_node, at_seq=body.at_seq
    )
    if staged.head_at(body.group, body.at_seq) != body.head:
        # Another history under the same numbers: a home node restored from a backup.
        raise protocol.ProtocolError(
            "group_chain_broken", "the group's history differs from the sender's", 409
        )
    local_name = local_node_name()
    keys = {
        k.user.username: k
        for k in UserKeys.objects.filter(
            user__username__in=list(body.wraps), user__is_active=True
        ).select_related("user")
    }
    # Copies already stored (the message sent again in a new envelope: a Retry, a
    # resealing after a key change) are not stored twice.
    have = set(
        Message.objects.filter(
            owner__username__in=list(body.wraps),
            direction=Message.Direction.IN,
            group_message_id=body.message,
        ).values_list("owner__username", flat=True)
    )
    copies = []
    payload, file = None, None
    for username, wrap in sorted(body.wraps.items()):
        member = state.members.get(username)
        if member is not None and member.node == local_name and member.joined_seq <= body.at_seq:
            pass  # a member now, since before the message
        elif group is None or not member_at(group, username, local_name, body.at_seq):
            raise protocol.ProtocolError(
                "recipient_not_a_member", f"{username} is not a member here", 403
            )
        if username not in keys:
            raise protocol.ProtocolError("unknown_recipient", "no such person on this node")
        opened = wire.open_content(
            body.ciphertext,
            wrap,
            recipient_box_key=box_key_for(keys[username]),
            sender_box_key=sender_box_key,
        )
        if payload is not None and opened != payload:
            raise protocol.ProtocolError("decrypt_failed", "recipients' content differs")
        payload = opened
        text, file = check_message_payload(opened)
        if username in have or (username, body.message) in staged.copies:
            continue
        if member is None and removed_before(group, username, envelope.created_ms):
            # Their office had applied their removal well before the message was written
            # (a sender's office that was behind): nothing sent after it reaches them.
            continue
        copies.append(
            Message(
                envelope_id=uuid.uuid4(),
                kind="message",
                owner=keys[username].user,
                peer_username=group_conversation_key(body.group),
                sender_username=envelope.sender,
                recipient_username=username,
                direction=Message.Direction.IN,
                text=text,
                created_ms=envelope.created_ms,
                status=Message.Status.DELIVERED,
                delivered_at=timezone.now(),
                group_message_id=uuid.UUID(body.message),
            )
        )
    # Only now, the whole envelope accepted: these recipients have their copy.
    staged.copies.update((c.recipient_username, body.message) for c in copies)
    key = body.group

    def write() -> None:
        for copy in copies:
            copy.group = staged.states[key][0]

    staged.writes.append(write)
    return copies, file


def check_read(staged: Staged, envelope: protocol.Envelope) -> list[int]:
    """A member read some of the author's messages: their delivery rows turn read.
    Returns the author's message ids that change."""
    body = wire.parse_read_body(envelope.body)
    ids = list(
        Message.objects.filter(
            owner__username=body.author,
            direction=Message.Direction.OUT,
            group__group_id=body.group,
            group_message_id__in=list(body.ids),
            deliveries__username=envelope.sender,
            deliveries__node=envelope.sender_node,
        ).values_list("id", flat=True)
    )

    def write() -> None:
        now = timezone.now()
        GroupDelivery.objects.filter(
            message_id__in=ids, username=envelope.sender, read_at__isnull=True
        ).update(read_at=now, delivered_at=now, error="")
        _settle(ids, now=now)

    staged.writes.append(write)
    return ids


def resign(*, sender: User, now) -> int:
    """After sender's keys changed: their waiting group messages sealed again, their
    waiting changes and read receipts signed again (same bytes and ids). Inside a
    transaction; returns how many rows changed."""
    rows = list(
        Outbox.objects.filter(kind="group_message", message__owner=sender, failed_at__isnull=True)
    )
    count = len(reseal(rows, now=now, keep_earlier=True))
    sign_key = signing_key_for(sender.keys)
    waiting = Outbox.objects.filter(kind__in=["group_event", "group_read"], failed_at__isnull=True)
    for row in waiting:
        envelope = protocol.parse_envelope(bytes(row.raw))
        if envelope.sender != sender.username:
            continue
        body = envelope.body
        if envelope.kind == "group_event":
            change = wire.parse_change_body(body, kind="group_event")
            event_sig = sign_key.sign(wire.DOMAIN_GROUP_EVENT + change.event.raw).signature
            body = wire.event_body(change.event.raw, event_sig)
        sealed = protocol.sign_group_envelope(
            sign_key,
            envelope_id=envelope.id,
            kind=envelope.kind,
            sender=envelope.sender,
            sender_node=envelope.sender_node,
            recipient_node=envelope.recipient_node,
            created_ms=envelope.created_ms,
            body=body,
        )
        row.earlier_sealings = [*row.earlier_sealings, protocol.b64e(bytes(row.raw))]
        row.raw, row.signature, row.next_attempt_at = sealed.raw, sealed.signature, now
        row.save(update_fields=["raw", "signature", "next_attempt_at", "earlier_sealings"])
        count += 1
    return count
