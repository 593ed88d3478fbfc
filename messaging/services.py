"""Every write about messages: sending, delivering, receiving, read receipts, retries.

Delivery follows Synapse's per-destination queue: the outbox in the database is the
truth, one Celery task drains one destination node in signed batches, and a periodic
sweeper re-enqueues whatever a lost task left behind.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import redis
import requests
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from accounts import services as account_services
from accounts.keys import box_key_for, signing_key_for
from accounts.models import User, UserKeys
from accounts.queries import local_usernames
from p2psocial import redis_client
from peers import directory, protocol
from peers.auth import KnownNode, write_transaction
from peers.models import DirectoryUser, PeerNode
from peers.services import request_presence_report

from . import errors, queries
from .models import DestinationState, Message, Outbox, ReceivedEnvelope

logger = logging.getLogger(__name__)

INBOX_PATH = "/api/v1/inbox"
DELIVER_TASK = "messaging.tasks.deliver_to_node"
# A receiver may not know a new sender (or a sender's new keys) until its next directory
# fetch: these per-envelope refusals are retried with backoff instead of failing at once.
# Refusals that a directory catching up can cure (the sender's keys, node or record).
RETRYABLE_CODES = frozenset(
    {"unknown_sender", "sender_not_on_node", "bad_envelope_signature", "record_expired"}
)
READ_RECEIPT_MAX_IDS = 400  # keeps one receipt envelope well under MAX_ENVELOPE_BYTES
MAX_BATCHES_PER_RUN = 200
# While a delivery task for a node is queued or draining, sends skip enqueueing another
# one (the drain picks their rows up). The flag expires on its own if a worker dies.
SCHEDULED_FLAG_TTL_S = 30
BATCH_BODY_HEADROOM_BYTES = 4096


# --- small helpers ------------------------------------------------------------------------
def _now_ms() -> int:
    return int(time.time() * 1000)


def _local_node_name() -> str:
    from peers.client import local_identity

    return local_identity().name


def _node_signing_key():
    from peers.client import local_identity

    return local_identity().signing_key


def _scheduled_key(node: str) -> str:
    return f"p2p:messaging:scheduled:{settings.CELERY_TASK_DEFAULT_QUEUE}:{node}"


def _enqueue(node: str, *, force: bool = False) -> None:
    """Start a delivery task for node, unless one is already waiting to start."""
    from p2psocial.celery import app

    try:
        if not force and not redis_client.get().set(
            _scheduled_key(node), b"1", nx=True, ex=SCHEDULED_FLAG_TTL_S
        ):
            return
        app.send_task(DELIVER_TASK, args=[node])
    except (redis.RedisError, BrokerError) as exc:
        # The outbox row is committed: the sweeper enqueues it once Redis is back.
        with contextlib.suppress(redis.RedisError):
            redis_client.get().delete(_scheduled_key(node))
        logger.warning("delivery not enqueued", extra={"node": node, "error": type(exc).__name__})


def schedule_delivery(node: str) -> None:
    """Enqueue delivery to node once the current transaction commits."""
    transaction.on_commit(lambda: _enqueue(node))


def _forget_backoff(nodes) -> None:
    """Let these destination nodes be tried at once (a retry, or the node came back)."""
    DestinationState.objects.filter(node__in=nodes).update(
        consecutive_failures=0, next_attempt_at=None
    )


def backoff_delay_s(failures: int) -> float:
    """Capped exponential backoff with jitter (half to full of the nominal delay)."""
    nominal = settings.DELIVERY_BACKOFF_BASE_S * (2 ** min(max(failures - 1, 0), 30))
    capped = min(settings.DELIVERY_BACKOFF_MAX_S, nominal)
    return capped * random.uniform(0.5, 1.0)


def validate_text(text: object) -> str:
    """The text as typed, byte-exact; refused when empty, too long or not encodable."""
    if not isinstance(text, str):
        raise errors.InvalidText("The message must be text.")
    if not text.strip():
        raise errors.EmptyMessage("Write something before sending.")
    if len(text) > settings.MESSAGE_MAX_CHARS:
        raise errors.MessageTooLong(
            f"A message may be at most {settings.MESSAGE_MAX_CHARS} characters "
            f"(this one has {len(text)})."
        )
    if "\x00" in text:
        raise errors.InvalidText("The message contains a NUL character.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise errors.InvalidText("The message is not valid Unicode text.") from None
    return text


# --- sending ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recipient:
    username: str
    node: str
    box_key: bytes


def resolve_recipient(username: str, *, local_name: str | None = None) -> Recipient:
    """Where a person lives and their public box key: this node's users first, then the
    directory cache. Raises UnknownRecipient, or RecipientRecordExpired for a person of
    another node whose user record has expired."""
    local_name = local_name or _local_node_name()
    address = queries.recipient_address(username)
    if address is None or address.node == local_name:  # listed but no account here (any more)
        raise errors.UnknownRecipient(f"There is nobody called {username!r}.")
    if address.record is not None and not directory.record_is_current(address.record):
        raise errors.RecipientRecordExpired(
            f"{username}'s entry in the network directory has expired, so nothing can be "
            "sent to them safely for now (their office may be offline). Try again later."
        )
    return Recipient(username, address.node or local_name, address.box_key)


def _seal(
    *,
    sender: User,
    sender_node: str,
    recipient: Recipient,
    kind: str,
    payload: dict[str, Any],
    envelope_id: str,
    created_ms: int,
) -> protocol.SignedEnvelope:
    keys = sender.keys
    return protocol.seal_envelope(
        sender_sign_key=signing_key_for(keys),
        sender_box_key=box_key_for(keys),
        recipient_box_key=recipient.box_key,
        envelope_id=envelope_id,
        kind=kind,
        sender=sender.username,
        sender_node=sender_node,
        recipient=recipient.username,
        recipient_node=recipient.node,
        created_ms=created_ms,
        payload=payload,
    )


def _outbox_row(
    sealed: protocol.SignedEnvelope,
    *,
    envelope_id: str,
    kind: str,
    destination: str,
    message: Message | None = None,
) -> Outbox:
    now = timezone.now()
    return Outbox(
        envelope_id=envelope_id,
        kind=kind,
        destination=destination,
        raw=sealed.raw,
        signature=sealed.signature,
        message=message,
        queued_at=now,
        next_attempt_at=now,
    )


def send_message(*, sender: User, recipient_username: str, text: str) -> Message:
    """Store the message and its sealed envelope in the outbox; delivery starts on commit."""
    text = validate_text(text)
    if recipient_username == sender.username:
        raise errors.CannotMessageSelf("You cannot send a message to yourself.")
    local_name = _local_node_name()
    recipient = resolve_recipient(recipient_username, local_name=local_name)
    envelope_id = protocol.new_envelope_id()
    created_ms = _now_ms()
    sealed = _seal(
        sender=sender,
        sender_node=local_name,
        recipient=recipient,
        kind="message",
        payload={"text": text},
        envelope_id=envelope_id,
        created_ms=created_ms,
    )
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
        _outbox_row(
            sealed,
            envelope_id=envelope_id,
            kind="message",
            destination=recipient.node,
            message=message,
        ).save()
    # After the block: it runs at once unless a caller's transaction is still open, and
    # not while this process's other sending threads queue behind the SQLite writer.
    schedule_delivery(recipient.node)
    logger.info(
        "message queued",
        extra={"envelope": envelope_id, "node": recipient.node, "sender": sender.username},
    )
    return message


def reseal_outbox(*, sender: User) -> int:
    """Seal the sender's waiting messages again with their current keys (same id, time and
    text): after a key rotation receivers accept only the new signature. Waiting read
    receipts of the sender are sealed again too (same id and ids), so those messages still
    turn read for their authors. Returns how many messages were resealed."""
    now = timezone.now()
    with transaction.atomic():
        receipts = Outbox.objects.filter(kind="read", failed_at__isnull=True).only("id", "raw")
        mine = [r.id for r in receipts if _envelope_sender(bytes(r.raw)) == sender.username]
        resealed_receipts, _ = _reseal_receipts(Outbox.objects.filter(id__in=mine), now=now)
        rows = Outbox.objects.filter(kind="message", message__owner=sender)
        # The receiver may hold the current bytes already, with only their acknowledgement
        # lost: it acknowledges those (not the new ones), so they are kept to check it.
        resealed = _reseal(rows, now=now, keep_earlier=True)
        destinations = {r.destination for r in resealed + resealed_receipts if r.failed_at is None}
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


def _reseal(rows, *, now, keep_earlier: bool = False) -> list[Outbox]:
    """Seal these outbox messages again (same id, time and text) with their sender's
    current keys, for their recipient's current key and node as this node knows them, and
    make them due at once; keep_earlier keeps the bytes they had (the receiver may have
    stored them). A recipient gone from the network is left as it is: it fails by age.
    Call inside a transaction; returns the resealed rows."""
    rows = list(rows.filter(kind="message").select_related("message__owner__keys"))
    local_name = _local_node_name() if rows else ""
    resealed = []
    for row in rows:
        message = row.message
        try:
            recipient = resolve_recipient(message.recipient_username, local_name=local_name)
        except (errors.UnknownRecipient, errors.RecipientRecordExpired):
            continue  # gone, or not vouched for now: left as it is, it fails by age
        sealed = _seal(
            sender=message.owner,
            sender_node=local_name,
            recipient=recipient,
            kind="message",
            payload={"text": message.text},
            envelope_id=str(row.envelope_id),
            created_ms=message.created_ms,
        )
        if keep_earlier:
            row.earlier_sealings = [*row.earlier_sealings, protocol.b64e(bytes(row.raw))]
        row.raw, row.signature, row.destination = sealed.raw, sealed.signature, recipient.node
        row.next_attempt_at = now
        row.save(
            update_fields=["raw", "signature", "destination", "next_attempt_at", "earlier_sealings"]
        )
        resealed.append(row)
    return resealed


def _envelope_sender(raw: bytes) -> str | None:
    try:
        return protocol.parse_envelope(raw).sender
    except protocol.ProtocolError:
        return None


def _seal_receipt(
    *, reader: User, reader_node: str, author: Recipient, ids: list[str], envelope_id: str
) -> protocol.SignedEnvelope:
    return _seal(
        sender=reader,
        sender_node=reader_node,
        recipient=author,
        kind="read",
        payload={"ids": ids},
        envelope_id=envelope_id,
        created_ms=_now_ms(),
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
    local_name = _local_node_name()
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
            row = _outbox_row(
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
    return count


def _reseal_receipts(rows, *, now) -> tuple[list[Outbox], list[Outbox]]:
    """Seal these waiting read receipts again (same id and ids) with their reader's current
    keys, for their author's current key and node as this node knows them, and make them
    due at once. A refused receipt was not stored, and a receiver that stored an earlier
    copy refuses the new one as id_conflict, which drops it: applied already either way.
    Call inside a transaction; returns (resealed rows, rows dropped: nothing to seal)."""
    rows = list(rows.filter(kind="read"))
    local_name = _local_node_name() if rows else ""
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
    if message is None or message.status != Message.Status.FAILED:
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
        _forget_backoff(destinations)
        for node in sorted(destinations):
            transaction.on_commit(lambda node=node: _enqueue(node, force=True))
    logger.info("failed messages re-queued", extra={"count": len(rows)})
    return len(rows)


# --- receiving ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _SenderKeys:
    node: str
    sign_key: bytes
    box_key: bytes
    current: bool = True  # False: the directory's record of this sender has expired


def _sender_keys(usernames: set[str], *, from_node: str, local_node: str) -> dict:
    if not usernames:
        return {}
    if from_node == local_node:
        rows = UserKeys.objects.filter(user__username__in=usernames, user__is_active=True)
        return {
            k.user.username: _SenderKeys(local_node, bytes(k.sign_public), bytes(k.box_public))
            for k in rows.select_related("user")
        }
    rows = DirectoryUser.objects.filter(username__in=usernames, listed=True).select_related("node")
    return {
        d.username: _SenderKeys(
            d.node.name,
            bytes(d.sign_key),
            bytes(d.box_key),
            directory.record_is_current(bytes(d.record)),
        )
        for d in rows
    }


def _check_text_payload(payload: dict[str, Any]) -> str:
    text = payload.get("text")
    try:
        return validate_text(text)
    except errors.MessagingError as error:
        raise protocol.ProtocolError("invalid_payload", error.message) from None


def _check_read_payload(payload: dict[str, Any]) -> list[str]:
    ids = payload.get("ids")
    if not isinstance(ids, list) or not 0 < len(ids) <= 1000:
        raise protocol.ProtocolError("invalid_payload", "ids must be a list of 1-1000 ids")
    checked = []
    for value in ids:
        try:
            if not isinstance(value, str) or str(uuid.UUID(value)) != value:
                raise ValueError
        except ValueError:
            raise protocol.ProtocolError("invalid_payload", "each id must be a UUID") from None
        checked.append(value)
    return checked


@dataclass(frozen=True)
class _Stored:
    """What this node keeps of an envelope it stored: enough to acknowledge it again."""

    sha256: str
    sender: str
    sender_node: str
    kind: str


def _stored(envelope_ids: set[str]) -> dict[str, _Stored]:
    rows = ReceivedEnvelope.objects.filter(envelope_id__in=envelope_ids).values_list(
        "envelope_id", "sha256", "sender", "sender_node", "kind"
    )
    return {str(envelope_id): _Stored(*rest) for envelope_id, *rest in rows}


def _id_conflict() -> protocol.ProtocolError:
    return protocol.ProtocolError(
        "id_conflict", "another envelope was already stored under this id", 409
    )


def _is_resealed(envelope: protocol.Envelope, payload: dict[str, Any], stored: _Stored) -> bool:
    """Whether envelope, from the sender of the one stored under its id, is that message
    sealed again (same recipient, time and text; new bytes after the sender's key change)."""
    if stored.kind != "message" or envelope.kind != "message":
        return False  # a waiting read receipt is dropped on a key change, never resealed
    kept = (
        Message.objects.filter(envelope_id=envelope.id, direction=Message.Direction.IN)
        .values_list("sender_username", "recipient_username", "created_ms", "text")
        .first()
    )
    return kept == (envelope.sender, envelope.recipient, envelope.created_ms, payload.get("text"))


@dataclass
class CheckedBatch:
    """A batch from a node as check_envelopes leaves it: the answer, and the rows that
    store_envelopes writes."""

    from_node: str
    acks: list[dict[str, str]] = field(default_factory=list)
    refusals: list[dict[str, Any]] = field(default_factory=list)
    received: list[ReceivedEnvelope] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    receipts: list[tuple[str, str, list[str]]] = field(default_factory=list)  # reader, author
    read_message_ids: set[int] = field(default_factory=set)


def check_envelopes(items: list[protocol.BatchItem], *, from_node: KnownNode) -> CheckedBatch:
    """Check, decrypt and resolve a batch from a node; reads only, no write.

    Every signature, decryption, payload check and read-receipt lookup happens here,
    before the write lock, so that one peer's batch holds this node's writer only for
    store_envelopes. Each refused envelope gets an error with a stable code, each
    accepted or already stored one a signed acknowledgement.
    """
    local_name = _local_node_name()
    node_key = _node_signing_key()
    parsed = [i.envelope for i in items if i.envelope is not None]
    names = {e.sender for e in parsed}
    senders = _sender_keys(names, from_node=from_node.name, local_node=local_name)
    # A name of this node spoken by another node's person (an old or raced directory
    # entry) would land in a local person's conversation: refused.
    local_names = local_usernames(names) if from_node.name != local_name else set()
    recipients = {
        k.user.username: k
        for k in UserKeys.objects.filter(
            user__username__in={e.recipient for e in parsed}, user__is_active=True
        ).select_related("user")
    }
    known = _stored({e.id for e in parsed})
    box_keys: dict[str, Any] = {}
    batch = CheckedBatch(from_node=from_node.name)
    for item in items:
        envelope = item.envelope
        try:
            if item.error is not None:
                raise item.error
            if envelope.sender_node != from_node.name:
                raise protocol.ProtocolError(
                    "sender_not_on_node", "the envelope's sender node is not the calling node"
                )
            if envelope.sender in local_names:
                raise protocol.ProtocolError(
                    "sender_is_local_name", "the sender's name is a person of this node", 403
                )
            sender = senders.get(envelope.sender)
            if sender is None:
                raise protocol.ProtocolError("unknown_sender", "the sender is not in the directory")
            if sender.node != from_node.name:
                raise protocol.ProtocolError(
                    "sender_not_on_node", "the sender does not belong to the calling node"
                )
            if not sender.current:
                raise directory.RecordExpired(envelope.sender)
            protocol.verify_envelope(sender.sign_key, envelope.raw, item.signature)
            if envelope.recipient_node != local_name:
                raise protocol.ProtocolError(
                    "wrong_recipient_node", "the envelope is addressed to another node"
                )
            recipient = recipients.get(envelope.recipient)
            if recipient is None:
                raise protocol.ProtocolError("unknown_recipient", "no such person on this node")
            digest = protocol.sha256_hex(envelope.raw)
            stored = known.get(envelope.id)
            if stored is not None and stored.sha256 == digest:  # the identical acknowledgement
                batch.acks.append(protocol.sign_ack(node_key, envelope.id, envelope.raw))
                continue
            if stored is not None and (stored.sender, stored.sender_node) != (
                envelope.sender,
                envelope.sender_node,
            ):
                raise _id_conflict()
            if envelope.recipient not in box_keys:
                box_keys[envelope.recipient] = box_key_for(recipient)
            payload = protocol.open_envelope(
                envelope,
                recipient_box_key=box_keys[envelope.recipient],
                sender_box_key=sender.box_key,
            )
            if stored is not None:
                # Its sender sealed it again (their keys changed) after the first copy
                # arrived and the acknowledgement was lost: acknowledge the bytes stored,
                # which the sender kept. Any other content under this id is a conflict.
                if not _is_resealed(envelope, payload, stored):
                    raise _id_conflict()
                batch.acks.append(
                    protocol.sign_ack_for_digest(node_key, envelope.id, stored.sha256)
                )
                continue
            _stage(batch, envelope, payload, digest=digest, owner=recipient.user)
            known[envelope.id] = _Stored(
                digest, envelope.sender, envelope.sender_node, envelope.kind
            )
            batch.acks.append(protocol.sign_ack(node_key, envelope.id, envelope.raw))
        except protocol.ProtocolError as error:
            refusal: dict[str, Any] = {"index": item.index, **error.as_dict()}
            if envelope is not None:
                refusal["id"] = envelope.id
            batch.refusals.append(refusal)
    for reader, author, ids in batch.receipts:
        batch.read_message_ids.update(_unread_by(reader=reader, author=author, ids=ids))
    return batch


def store_envelopes(*, batch: CheckedBatch) -> dict:
    """Write what check_envelopes accepted, each envelope once, in the caller's write
    transaction; writes only. Returns {"acks": [...], "errors": [...]}."""
    if batch.received:
        try:
            with transaction.atomic():
                ReceivedEnvelope.objects.bulk_create(batch.received)
                Message.objects.bulk_create(batch.messages)
                _mark_read(sorted(batch.read_message_ids), now=timezone.now())
        except IntegrityError:
            # Another request stored one of these envelopes since they were checked: the
            # sender retries and then gets the acknowledgement of the stored copy.
            raise protocol.ProtocolError(
                "conflict", "concurrent delivery, retry the batch", 409
            ) from None
    logger.info(
        "envelopes accepted",
        extra={"node": batch.from_node, "acks": len(batch.acks), "refused": len(batch.refusals)},
    )
    return {"acks": batch.acks, "errors": batch.refusals}


def accept_envelopes(items: list[protocol.BatchItem], *, from_node: KnownNode) -> dict:
    """check_envelopes, then store_envelopes in a write transaction of its own (the peer
    inbox claims the request's nonce in that transaction too, see messaging.peer_api)."""
    batch = check_envelopes(items, from_node=from_node)
    with write_transaction():
        return store_envelopes(batch=batch)


def _stage(
    batch: CheckedBatch,
    envelope: protocol.Envelope,
    payload: dict[str, Any],
    *,
    digest: str,
    owner: User,
) -> None:
    if envelope.kind == "message":
        text = _check_text_payload(payload)
        batch.messages.append(
            Message(
                envelope_id=envelope.id,
                kind="message",
                owner=owner,
                peer_username=envelope.sender,
                sender_username=envelope.sender,
                recipient_username=envelope.recipient,
                direction=Message.Direction.IN,
                text=text,
                created_ms=envelope.created_ms,
                status=Message.Status.DELIVERED,
                delivered_at=timezone.now(),
            )
        )
    else:
        batch.receipts.append((envelope.sender, envelope.recipient, _check_read_payload(payload)))
    batch.received.append(
        ReceivedEnvelope(
            envelope_id=envelope.id,
            sha256=digest,
            kind=envelope.kind,
            sender=envelope.sender,
            sender_node=envelope.sender_node,
        )
    )


def _unread_by(*, reader: str, author: str, ids: list[str]) -> list[int]:
    """author's messages to reader among ids that reader has not read yet: only those a
    receipt from reader may mark read."""
    return list(
        Message.objects.filter(
            direction=Message.Direction.OUT,
            owner__username=author,
            sender_username=author,
            recipient_username=reader,
            envelope_id__in=ids,
        )
        .exclude(status=Message.Status.READ)
        .values_list("id", flat=True)
    )


def _mark_read(message_ids: list[int], *, now) -> None:
    """Mark these outgoing messages read (and delivered, if the receipt came first)."""
    for start in range(0, len(message_ids), READ_RECEIPT_MAX_IDS):
        chunk = message_ids[start : start + READ_RECEIPT_MAX_IDS]
        unread = Message.objects.filter(id__in=chunk).exclude(status=Message.Status.READ)
        unread.filter(delivered_at__isnull=True).update(delivered_at=now)
        unread.update(status=Message.Status.READ, read_at=now, error="")
        Outbox.objects.filter(message_id__in=chunk).delete()


# --- delivering ---------------------------------------------------------------------------
@dataclass
class DeliveryResult:
    """What one deliver_pending run did; retry_in_s is set while the node is backing off,
    busy_for_s when another worker's lock on the node lasts that long unless extended."""

    node: str
    delivered: int = 0
    failed: int = 0
    batches: int = 0
    retry_in_s: float | None = None
    busy: bool = False
    busy_for_s: float | None = None
    more: bool = False


class _Unreachable(Exception):
    """The whole batch did not get through (network, 5xx, refused batch, bad answer)."""


def delivery_lock_ttl_s() -> float:
    """A node's delivery lock lives this long unless its holder extends it; a heartbeat
    thread does, every third of it, for as long as the holder drains the node (however
    slow the exchange). So a worker killed mid-delivery stalls that queue this long."""
    return settings.DELIVERY_LOCK_TTL_S


class _HeldLock:
    """A node's delivery lock while this worker holds it: a heartbeat thread extends it to
    a full TTL every third of the TTL, also while an exchange waits on the peer, until
    release(). held turns False if the lock was lost (it expired, e.g. while this process
    was frozen, and maybe another worker has it now)."""

    def __init__(self, node: str, lock: Any, ttl_s: float) -> None:
        self.node = node
        self._lock = lock
        self._lost = threading.Event()
        self._released = threading.Event()
        self._heartbeat = threading.Thread(
            target=self._keep, args=(ttl_s / 3,), name=f"delivery-lock {node}", daemon=True
        )
        self._heartbeat.start()

    @property
    def held(self) -> bool:
        return not self._lost.is_set()

    def _keep(self, every_s: float) -> None:
        while not self._released.wait(every_s):
            try:
                self._lock.reacquire()
            except redis.exceptions.LockNotOwnedError:
                self._lost.set()
                logger.warning("delivery lock lost", extra={"node": self.node})
                return
            except redis.RedisError as exc:
                # Redis is away: nobody can take the lock meanwhile; try again next beat.
                logger.warning(
                    "delivery lock not extended", extra={"node": self.node, "error": str(exc)}
                )

    def release(self) -> None:
        self._released.set()
        self._heartbeat.join()
        if self.held:
            with contextlib.suppress(redis.RedisError):
                self._lock.release()


def _lock_name(node: str) -> str:
    return f"p2p:messaging:deliver-lock:{settings.CELERY_TASK_DEFAULT_QUEUE}:{node}"


def _lock_expires_in_s(node: str) -> float | None:
    """How long node's delivery lock lasts unless its holder extends it (None: unknown)."""
    try:
        remaining_ms = redis_client.get().pttl(_lock_name(node))
    except redis.RedisError:
        return None
    return remaining_ms / 1000 if remaining_ms >= 0 else None


@contextlib.contextmanager
def _node_lock(node: str) -> Iterator[_HeldLock | bool | None]:
    """A Redis lock so that one worker at a time sends a node's queue.

    Yields the held lock, None when Redis is unavailable (delivery is idempotent, so going
    on without it only risks duplicate work), or False when another worker holds it.
    """
    name = _lock_name(node)
    ttl_s = delivery_lock_ttl_s()
    try:
        # Not thread-local: the heartbeat thread extends the lock this thread took.
        lock = redis_client.get().lock(name, timeout=ttl_s, thread_local=False)
        acquired = lock.acquire(blocking=False)
    except redis.RedisError as exc:
        logger.warning("delivery lock unavailable", extra={"node": node, "error": str(exc)})
        yield None
        return
    if not acquired:
        yield False
        return
    held = _HeldLock(node, lock, ttl_s)
    try:
        yield held
    finally:
        held.release()


def _due(node: str):
    """Node's outbox rows that may be sent now."""
    return Outbox.objects.filter(
        destination=node, failed_at__isnull=True, next_attempt_at__lte=timezone.now()
    )


def _due_rows(node: str) -> list[Outbox]:
    rows = list(
        _due(node)
        .order_by("id")
        .only(
            "id",
            "envelope_id",
            "kind",
            "raw",
            "signature",
            "earlier_sealings",
            "read_ids",
            "message_id",
            "attempts",
        )[: settings.DELIVERY_BATCH_MAX_ENVELOPES]
    )
    budget = settings.PEER_MAX_BODY_BYTES - BATCH_BODY_HEADROOM_BYTES
    size = 0
    for count, row in enumerate(rows):
        size += (len(row.raw) + 2) // 3 * 4 + 120  # base64 body, signature and JSON
        if size > budget and count > 0:
            return rows[:count]
    return rows


def _has_due(node: str) -> bool:
    return _due(node).exists()


def _post_batch(node: str, rows: list[Outbox]) -> tuple[bytes, list, list]:
    """Send rows to node; returns (node verify key, acks, errors) or raises _Unreachable."""
    local_name = _local_node_name()
    if node == local_name:
        # Same node: the very same receiving service, without the network hop.
        verify_key = bytes(_node_signing_key().verify_key)
        items = []
        for index, row in enumerate(rows):
            try:
                envelope = protocol.parse_envelope(bytes(row.raw))
                items.append(protocol.BatchItem(index, envelope, bytes(row.signature)))
            except protocol.ProtocolError as error:
                items.append(protocol.BatchItem(index, None, None, error))
        try:
            answer = accept_envelopes(items, from_node=KnownNode(local_name, verify_key, None))
        except protocol.ProtocolError as error:
            raise _Unreachable(error.code) from None
        return verify_key, answer["acks"], answer["errors"]

    from peers import client

    peer = PeerNode.objects.filter(name=node).first()
    if peer is None:
        raise _Unreachable("unknown_node")
    if not peer.active:
        raise _Unreachable("node_revoked")
    body = protocol.encode_batch(
        [protocol.SignedEnvelope(bytes(r.raw), bytes(r.signature)) for r in rows]
    )
    try:
        response = client.signed_post(
            peer.url,
            INBOX_PATH,
            body,
            timeout=settings.PEER_HTTP_TIMEOUT_S,
            deadline_s=settings.PEER_REQUEST_DEADLINE_S,
            max_answer_bytes=settings.PEER_MAX_BODY_BYTES,
        )
    except client.AnswerTooLarge:
        raise _Unreachable("answer too large") from None
    except client.DeadlineExceeded:
        raise _Unreachable("deadline exceeded") from None
    except requests.RequestException as exc:
        raise _Unreachable(f"network: {type(exc).__name__}") from None
    try:
        answer = response.json()
    except (ValueError, RecursionError):  # a hostile peer's deeply nested JSON included
        answer = None
    if response.status_code != 200:
        code = ""
        if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
            code = str(answer["error"].get("code", ""))[:60]
        raise _Unreachable(f"http {response.status_code} {code}".strip())
    if not isinstance(answer, dict):
        raise _Unreachable("malformed answer")
    acks, refusals = answer.get("acks"), answer.get("errors", [])
    if not isinstance(acks, list) or not isinstance(refusals, list):
        raise _Unreachable("malformed answer")
    return bytes(peer.sign_key), acks, refusals


def _record_failure(node: str, rows: list[Outbox], reason: str) -> float:
    now = timezone.now()
    with write_transaction():
        state, _ = DestinationState.objects.get_or_create(node=node)
        state.consecutive_failures += 1
        delay = backoff_delay_s(state.consecutive_failures)
        state.next_attempt_at = now + timedelta(seconds=delay)
        state.last_error = reason[:200]
        state.save()
        Outbox.objects.filter(id__in=[r.id for r in rows]).update(
            attempts=F("attempts") + 1, last_error=reason[:200]
        )
    logger.warning(
        "delivery failed",
        extra={"node": node, "reason": reason, "retry_in_s": round(delay, 2)},
    )
    return delay


def _acknowledges(verify_key: bytes, ack: dict, row: Outbox) -> bool:
    """Whether ack is the receiver's verified acknowledgement of bytes this node sealed for
    row: the ones just sent, or an earlier sealing of the envelope that it stored before
    (it answers with the digest of what it holds). Either way, what arrived is what was sent."""
    for raw in [bytes(row.raw), *(protocol.b64d(b, field="sealing") for b in row.earlier_sealings)]:
        try:
            protocol.verify_ack(verify_key, ack, envelope_id=str(row.envelope_id), raw=raw)
        except protocol.ProtocolError:
            continue
        return True
    return False


def _apply_answer(
    node: str, rows: list[Outbox], verify_key: bytes, acks: list, refusals: list
) -> tuple[int, int]:
    """Mark acknowledged envelopes delivered, refused ones failed or retried: one transaction."""
    by_id = {str(r.envelope_id): r for r in rows}
    delivered: dict[str, Outbox] = {}
    for ack in acks:
        envelope_id = ack.get("id") if isinstance(ack, dict) else None
        row = by_id.get(envelope_id) if isinstance(envelope_id, str) else None
        if row is None:
            continue
        if not _acknowledges(verify_key, ack, row):
            logger.warning("acknowledgement refused", extra={"node": node, "envelope": envelope_id})
            continue
        delivered[envelope_id] = row
    failed: dict[str, list[Outbox]] = {}
    retried: list[Outbox] = []
    resealed: list[Outbox] = []
    moved: dict[int, str] = {}  # resealed for a person who changed office: row -> node
    for refusal in refusals:
        envelope_id = refusal.get("id") if isinstance(refusal, dict) else None
        row = by_id.get(envelope_id) if isinstance(envelope_id, str) else None
        if row is None or envelope_id in delivered:
            continue
        code = str(refusal.get("code", "refused"))[:60]
        if code in RETRYABLE_CODES:
            retried.append(row)
        elif code == "decrypt_failed" and (row.message_id or row.read_ids):
            # Sealed to a key the recipient no longer has (they rotated it): seal it again
            # for the key in our directory and keep it queued. If our directory is behind,
            # the next refusal reseals again once it has caught up. A read receipt too:
            # dropped, its messages would stay "delivered" for their author for good.
            resealed.append(row)
        else:
            failed.setdefault(code, []).append(row)
        logger.warning(
            "envelope refused", extra={"node": node, "envelope": envelope_id, "code": code}
        )
    answered = set(delivered) | {str(r.envelope_id) for rs in failed.values() for r in rs}
    retried_ids = {str(r.envelope_id) for r in retried + resealed}
    retried += [r for i, r in by_id.items() if i not in answered and i not in retried_ids]
    now = timezone.now()
    with write_transaction():
        if resealed:
            chosen = Outbox.objects.filter(id__in=[r.id for r in resealed])
            again = _reseal(chosen, now=now)
            receipts, dropped = _reseal_receipts(chosen, now=now)
            moved = {r.id: r.destination for r in again + receipts if r.destination != node}
            gone = {r.id for r in dropped}
            resealed = [r for r in resealed if r.id not in moved and r.id not in gone]
        if delivered:
            # FAILED too: the sweeper may have expired a row whose batch was in flight;
            # a verified acknowledgement is the truth.
            Message.objects.filter(
                id__in=[r.message_id for r in delivered.values() if r.message_id],
                status__in=[Message.Status.QUEUED, Message.Status.FAILED],
            ).update(status=Message.Status.DELIVERED, delivered_at=now, error="")
            Outbox.objects.filter(id__in=[r.id for r in delivered.values()]).delete()
        for code, group in failed.items():
            Message.objects.filter(
                id__in=[r.message_id for r in group if r.message_id],
                status=Message.Status.QUEUED,
            ).update(status=Message.Status.FAILED, error=code)
            Outbox.objects.filter(id__in=[r.id for r in group if r.message_id]).update(
                failed_at=now, last_error=code
            )
            Outbox.objects.filter(id__in=[r.id for r in group if not r.message_id]).delete()
        for group, error in ((retried, "not acknowledged"), (resealed, "decrypt_failed")):
            for row in group:
                Outbox.objects.filter(id=row.id).update(
                    attempts=row.attempts + 1,
                    next_attempt_at=now + timedelta(seconds=backoff_delay_s(row.attempts + 1)),
                    last_error=error,
                )
        DestinationState.objects.filter(node=node, consecutive_failures__gt=0).update(
            consecutive_failures=0, next_attempt_at=None, last_error="", last_success_at=now
        )
    for destination in sorted(set(moved.values())):  # after the writer lock
        schedule_delivery(destination)
    failed_count = sum(len(g) for g in failed.values())
    logger.info(
        "batch delivered",
        extra={
            "node": node,
            "delivered": len(delivered),
            "failed": failed_count,
            "retried": len(retried),
            "resealed": len(resealed),
        },
    )
    return len(delivered), failed_count


def _drain(node: str, lock: _HeldLock | None, result: DeliveryResult) -> None:
    for _ in range(MAX_BATCHES_PER_RUN):
        state = DestinationState.objects.filter(node=node, next_attempt_at__isnull=False).first()
        if state is not None and state.next_attempt_at > timezone.now():
            result.retry_in_s = (state.next_attempt_at - timezone.now()).total_seconds()
            return
        rows = _due_rows(node)
        if not rows:
            return
        if lock is not None and not lock.held:
            result.busy = True  # another worker may have the node now: it drains the rest
            return
        try:
            verify_key, acks, refusals = _post_batch(node, rows)
        except _Unreachable as exc:
            result.retry_in_s = _record_failure(node, rows, str(exc))
            return
        # Applied even if the lock was lost meanwhile: acknowledgements are verified per
        # envelope against the bytes sent and refusals concern single envelopes, so a
        # second worker's answer for the same rows agrees. Only a second post must not
        # happen, and none starts once the lock is lost.
        delivered, failed = _apply_answer(node, rows, verify_key, acks, refusals)
        result.delivered += delivered
        result.failed += failed
        result.batches += 1
    result.more = True


def deliver_pending(*, node: str) -> DeliveryResult:
    """Send node's due outbox rows in signed batches until none is left (bounded).

    Safe to run twice at once: a Redis lock keeps one sender per node, and the receiver
    stores each envelope once and acknowledges a duplicate identically.
    """
    result = DeliveryResult(node=node)
    for _ in range(3):
        with _node_lock(node) as lock:
            if lock is False:
                result.busy = True
                result.busy_for_s = _lock_expires_in_s(node)
                return result
            _drain(node, lock, result)
        if result.busy:
            return result
        if result.retry_in_s is not None or result.more:
            return result  # this task runs again (or the sweeper does): keep the flag
        # Sends skipped their own task while the flag was set. Clear it, then look once
        # more: a row committed before the clear is seen here, a later send enqueues.
        with contextlib.suppress(redis.RedisError):
            redis_client.get().delete(_scheduled_key(node))
        if not _has_due(node):
            return result
    result.more = _has_due(node)
    return result


def peer_came_online(node_name: str) -> None:
    """The directory shows node_name reachable again: forget its backoff, send at once."""
    now = timezone.now()
    with transaction.atomic():
        _forget_backoff([node_name])
        Outbox.objects.filter(destination=node_name, failed_at__isnull=True).update(
            next_attempt_at=now
        )
        if Outbox.objects.filter(destination=node_name, failed_at__isnull=True).exists():
            transaction.on_commit(lambda: _enqueue(node_name, force=True))


def sweep_outbox() -> list[str]:
    """Fail envelopes older than DELIVERY_MAX_AGE_S and re-enqueue every destination with
    due rows (tasks lost to a Redis flush or a killed worker). Returns those nodes."""
    now = timezone.now()
    cutoff = now - timedelta(seconds=settings.DELIVERY_MAX_AGE_S)
    expired = list(
        Outbox.objects.filter(failed_at__isnull=True, queued_at__lt=cutoff).values_list(
            "id", "message_id"
        )
    )
    if expired:
        with transaction.atomic():
            Message.objects.filter(
                id__in=[m for _, m in expired if m], status=Message.Status.QUEUED
            ).update(status=Message.Status.FAILED, error="expired")
            Outbox.objects.filter(id__in=[o for o, m in expired if m]).update(
                failed_at=now, last_error="expired"
            )
            Outbox.objects.filter(id__in=[o for o, m in expired if not m]).delete()
        logger.warning("undelivered envelopes expired", extra={"count": len(expired)})
    due = set(
        Outbox.objects.filter(failed_at__isnull=True, next_attempt_at__lte=now)
        .values_list("destination", flat=True)
        .distinct()
    )
    waiting = set(
        DestinationState.objects.filter(node__in=due, next_attempt_at__gt=now).values_list(
            "node", flat=True
        )
    )
    nodes = sorted(due - waiting)
    for node in nodes:
        _enqueue(node, force=True)
    return nodes
