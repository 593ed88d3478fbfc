"""Sending: a message into the outbox, read receipts, retries, sealing again after a
key change."""

from __future__ import annotations

import dataclasses
import logging
import uuid

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from accounts import services as account_services
from accounts.models import User, UserKeys
from peers import protocol
from peers.auth import write_transaction
from peers.services import request_presence_report

from . import errors, files, group_messages, live, queries
from .content import READ_RECEIPT_MAX_IDS, validate_caption, validate_text
from .models import Attachment, Message, Outbox
from .outbox import (
    Recipient,
    enqueue,
    envelope_sender,
    forget_backoff,
    local_node_name,
    now_ms,
    outbox_row,
    resolve_recipient,
    schedule_delivery,
    seal,
)

logger = logging.getLogger(__name__)


def send_message(
    *, sender: User, recipient_username: str, text: str, upload: files.Upload | None = None
) -> Message:
    """Store the message (with the uploaded file, if any) and its sealed envelope in the
    outbox; delivery starts on commit. An upload that cannot be sent is removed."""
    stored = []  # _send appends the message once its write committed
    try:
        return _send(sender, recipient_username, text, upload, stored)
    except BaseException:
        if upload is not None and not stored:
            upload.discard()  # no orphan file: the message was not stored
        raise


def _send(
    sender: User,
    recipient_username: str,
    text: str,
    upload: files.Upload | None,
    stored: list[Message],
) -> Message:
    text = validate_caption(text) if upload is not None else validate_text(text)
    if recipient_username == sender.username:
        raise errors.CannotMessageSelf("You cannot send a message to yourself.")
    local_name = local_node_name()
    recipient = resolve_recipient(recipient_username, local_name=local_name)
    envelope_id = protocol.new_envelope_id()
    created_ms = now_ms()
    sealed = None
    # A file's preview goes along when the envelope has room for it (a long caption).
    for with_preview in (True, False) if upload is not None else (False,):
        payload: dict = {"text": text}
        if upload is not None:
            payload["file"] = upload.fields(with_preview=with_preview).as_payload()
        sealed = seal(
            sender=sender,
            sender_node=local_name,
            recipient=recipient,
            kind="message",
            payload=payload,
            envelope_id=envelope_id,
            created_ms=created_ms,
        )
        if len(sealed.raw) <= protocol.MAX_ENVELOPE_BYTES:
            break
    if len(sealed.raw) > protocol.MAX_ENVELOPE_BYTES:
        raise errors.MessageTooLong("This message is too long to send; please shorten it.")
    with write_transaction():
        message = Message.objects.create(
            envelope_id=uuid.UUID(envelope_id),
            kind="message",
            owner=sender,
            peer_username=recipient.username,
            sender_username=sender.username,
            recipient_username=recipient.username,
            direction=Message.Direction.OUT,
            text=text,
            created_ms=created_ms,
            status=Message.Status.QUEUED,
        )
        outbox_row(
            sealed,
            envelope_id=envelope_id,
            kind="message",
            destination=recipient.node,
            message=message,
        ).save()
        if upload is not None:
            files.attachment_for(message, upload.fields(), node=recipient.node, held=True).save()
    stored.append(message)
    # After the block: it runs at once unless a caller's transaction is still open, and
    # not while this process's other sending threads queue behind the SQLite writer.
    schedule_delivery(recipient.node)
    live.announce([message.id], "new")  # the sender's other tabs
    logger.info(
        "message queued",
        extra={"envelope": envelope_id, "node": recipient.node, "sender": sender.username},
    )
    return message


def message_payload(message: Message, *, with_preview: bool = True) -> dict:
    """The payload of an outgoing message as it is sealed (again)."""
    payload: dict = {"text": message.text}
    attachment = Attachment.objects.filter(message=message).first()
    if attachment is not None:
        fields = files.file_fields(attachment)
        if not with_preview:
            fields = dataclasses.replace(fields, preview=None)
        payload["file"] = fields.as_payload()
    return payload


def reseal_outbox(*, sender: User) -> int:
    """Seal the sender's waiting messages again with their current keys (same id, time and
    text): after a key rotation receivers accept only the new signature. Waiting read
    receipts of the sender are sealed again too (same id and ids), so those messages still
    turn read for their authors. Returns how many messages were resealed."""
    now = timezone.now()
    with transaction.atomic():
        receipts = Outbox.objects.filter(kind="read", failed_at__isnull=True).only("id", "raw")
        mine = [r.id for r in receipts if envelope_sender(bytes(r.raw)) == sender.username]
        resealed_receipts, _ = reseal_receipts(Outbox.objects.filter(id__in=mine), now=now)
        rows = Outbox.objects.filter(kind="message", message__owner=sender)
        # The receiver may hold the current bytes already, with only their acknowledgement
        # lost: it acknowledges those (not the new ones), so they are kept to check it.
        resealed = reseal(rows, now=now, keep_earlier=True)
        group_messages.resign(sender=sender, now=now)
        destinations = {r.destination for r in resealed + resealed_receipts if r.failed_at is None}
        destinations |= set(
            Outbox.objects.filter(kind__startswith="group_", failed_at__isnull=True).values_list(
                "destination", flat=True
            )
        )
        for node in sorted(destinations):
            schedule_delivery(node)
    logger.info(
        "outbox resealed",
        extra={"user_id": sender.pk, "rows": len(resealed), "receipts": len(resealed_receipts)},
    )
    return len(resealed)


def rotate_person_keys(*, user: User) -> tuple[UserKeys, int]:
    """New keys for a person, their waiting messages sealed again with them (receivers
    accept only the new signature), then a presence report that publishes them. For the
    admin's action and `manage.py rotate_user_keys`. Returns the keys and how many waiting
    messages were sealed again."""
    with transaction.atomic():  # new keys and resealed messages, or neither
        keys = account_services.rotate_keys(user=user)
        resealed = reseal_outbox(sender=user)
    request_presence_report()
    return keys, resealed


def reseal(rows, *, now, keep_earlier: bool = False) -> list[Outbox]:
    """Seal these outbox messages again (same id, time and text) with their sender's
    current keys, for their recipient's current key and node as this node knows them, and
    make them due at once; keep_earlier keeps the bytes they had (the receiver may have
    stored them). A recipient gone from the network is left as it is: it fails by age.
    Call inside a transaction; returns the resealed rows."""
    rows = list(rows.filter(kind="message").select_related("message__owner__keys"))
    local_name = local_node_name() if rows else ""
    resealed = []
    for row in rows:
        message = row.message
        try:
            recipient = resolve_recipient(message.recipient_username, local_name=local_name)
        except (errors.UnknownRecipient, errors.RecipientRecordExpired):
            continue  # gone, or not vouched for now: left as it is, it fails by age
        for with_preview in (True, False):  # as when it was sent: the preview if it fits
            sealed = seal(
                sender=message.owner,
                sender_node=local_name,
                recipient=recipient,
                kind="message",
                payload=message_payload(message, with_preview=with_preview),
                envelope_id=str(row.envelope_id),
                created_ms=message.created_ms,
            )
            if len(sealed.raw) <= protocol.MAX_ENVELOPE_BYTES:
                break
        if keep_earlier:
            row.earlier_sealings = [*row.earlier_sealings, protocol.b64e(bytes(row.raw))]
        row.raw, row.signature, row.destination = sealed.raw, sealed.signature, recipient.node
        row.next_attempt_at = now
        row.save(
            update_fields=["raw", "signature", "destination", "next_attempt_at", "earlier_sealings"]
        )
        resealed.append(row)
    return resealed


def _seal_receipt(
    *, reader: User, reader_node: str, author: Recipient, ids: list[str], envelope_id: str
) -> protocol.SignedEnvelope:
    return seal(
        sender=reader,
        sender_node=reader_node,
        recipient=author,
        kind="read",
        payload={"ids": ids},
        envelope_id=envelope_id,
        created_ms=now_ms(),
    )


def mark_conversation_read(*, viewer: User, peer_username: str, up_to_id: int | None = None) -> int:
    """Mark the viewer's unread incoming messages from peer as read, in conversation order
    up to and including the viewer's message up_to_id (all of them when None), and queue
    read receipts back to the peer's node. Idempotent; an up_to_id outside this
    conversation marks nothing. Returns how many messages became read."""
    unread = Message.objects.filter(
        owner=viewer,
        peer_username=peer_username,
        direction=Message.Direction.IN,
        read_at__isnull=True,
    )
    if up_to_id is not None:
        anchor = queries.conversation_position(
            owner=viewer, peer_username=peer_username, message_id=up_to_id
        )
        if anchor is None:
            return 0
        created_ms, message_id = anchor
        unread = unread.filter(
            Q(created_ms__lt=created_ms) | Q(created_ms=created_ms, id__lte=message_id)
        )
    ids = [str(i) for i in unread.order_by("id").values_list("envelope_id", flat=True)]
    if not ids:
        return 0
    local_name = local_node_name()
    try:
        recipient = resolve_recipient(peer_username, local_name=local_name)
    except (errors.UnknownRecipient, errors.RecipientRecordExpired):
        recipient = None  # gone from the network (or not vouched for): nobody to tell
    rows = []
    if recipient is not None:  # sealed before the write lock, which is held only to write
        for start in range(0, len(ids), READ_RECEIPT_MAX_IDS):
            envelope_id = protocol.new_envelope_id()
            chunk = ids[start : start + READ_RECEIPT_MAX_IDS]
            sealed = _seal_receipt(
                reader=viewer,
                reader_node=local_name,
                author=recipient,
                ids=chunk,
                envelope_id=envelope_id,
            )
            row = outbox_row(
                sealed, envelope_id=envelope_id, kind="read", destination=recipient.node
            )
            row.read_ids = chunk
            rows.append(row)
    now = timezone.now()
    with write_transaction():
        count = unread.filter(envelope_id__in=ids).update(read_at=now, status=Message.Status.READ)
        if rows and count:  # 0: a parallel request sent them
            Outbox.objects.bulk_create(rows)
    if rows and count:
        schedule_delivery(recipient.node)  # after the writer lock, as in send_message
    if count:
        live.announce_read(owner_id=viewer.pk, peer=peer_username)
    return count


def reseal_receipts(rows, *, now) -> tuple[list[Outbox], list[Outbox]]:
    """Seal these waiting read receipts again (same id and ids) with their reader's current
    keys, for their author's current key and node as this node knows them, and make them
    due at once. A refused receipt was not stored, and a receiver that stored an earlier
    copy refuses the new one as id_conflict, which drops it: applied already either way.
    Call inside a transaction; returns (resealed rows, rows dropped: nothing to seal)."""
    rows = list(rows.filter(kind="read"))
    local_name = local_node_name() if rows else ""
    resealed, dropped = [], []
    for row in rows:
        envelope = protocol.parse_envelope(bytes(row.raw))
        reader = (
            User.objects.filter(username=envelope.sender, is_active=True)
            .select_related("keys")
            .first()
        )
        if not row.read_ids or reader is None:  # queued before ids were kept, or reader gone
            dropped.append(row)
            continue
        try:
            author = resolve_recipient(envelope.recipient, local_name=local_name)
        except (errors.UnknownRecipient, errors.RecipientRecordExpired):
            continue  # left as it is: it fails by age, or heals once the record is current
        sealed = _seal_receipt(
            reader=reader,
            reader_node=local_name,
            author=author,
            ids=list(row.read_ids),
            envelope_id=str(row.envelope_id),
        )
        row.raw, row.signature, row.destination = sealed.raw, sealed.signature, author.node
        row.next_attempt_at = now
        row.save(update_fields=["raw", "signature", "destination", "next_attempt_at"])
        resealed.append(row)
    Outbox.objects.filter(id__in=[r.id for r in dropped]).delete()
    return resealed, dropped


def retry_message(*, owner: User, message_id: int) -> Message:
    """Put a failed message of owner back in the queue with a fresh maximum age."""
    message = Message.objects.filter(
        id=message_id, owner=owner, direction=Message.Direction.OUT
    ).first()
    if message is None or message.status != Message.Status.FAILED or message.group_id:
        # A group message is sent again per member, on its group's page.
        raise errors.NotRetryable("Only a failed message can be sent again.")
    retried = retry_failed_messages([message.id])
    if not retried:
        raise errors.NotRetryable("This message can no longer be sent again.")
    message.refresh_from_db()
    return message


def retry_failed_messages(message_ids: list[int]) -> int:
    """Re-queue failed outgoing messages (the admin action and the Retry button)."""
    now = timezone.now()
    with transaction.atomic():
        rows = list(
            Outbox.objects.filter(
                message_id__in=message_ids, message__status=Message.Status.FAILED
            ).values_list("id", "message_id", "destination")
        )
        if not rows:
            return 0
        Outbox.objects.filter(id__in=[r[0] for r in rows]).update(
            failed_at=None, queued_at=now, next_attempt_at=now, attempts=0, last_error=""
        )
        Message.objects.filter(id__in=[r[1] for r in rows]).update(
            status=Message.Status.QUEUED, error=""
        )
        # The same bytes again, not a new seal: if the recipient's node stored the first
        # copy and only its acknowledgement was lost, it acknowledges the same bytes; new
        # bytes under that id would be refused (id_conflict). A key the recipient has
        # replaced meanwhile is refused as decrypt_failed, which reseals (_apply_answer).
        destinations = {r[2] for r in rows}
        forget_backoff(destinations)
        for node in sorted(destinations):
            transaction.on_commit(lambda node=node: enqueue(node, force=True))
        live.announce([r[1] for r in rows], "status")
    logger.info("failed messages re-queued", extra={"count": len(rows)})
    return len(rows)
