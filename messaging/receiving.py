"""Receiving: a batch from a node checked (signatures, decryption, payloads) without
writing, then stored once in one write transaction."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.keys import box_key_for
from accounts.models import User, UserKeys
from accounts.queries import local_usernames
from peers import directory, protocol
from peers.auth import KnownNode, write_transaction
from peers.models import DirectoryUser

from . import files, group_messages, groups, live
from .content import (
    READ_RECEIPT_MAX_IDS,
    FileFields,
    check_fetched_payload,
    check_message_payload,
    check_read_payload,
)
from .models import Attachment, Message, Outbox, ReceivedEnvelope
from .outbox import local_node_name, node_signing_key

logger = logging.getLogger(__name__)


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
    files: dict[int, FileFields] = field(default_factory=dict)  # index in messages
    # "fetched" receipts: (reader, author, message envelope id, outcome)
    fetched: list[tuple[str, str, str, str]] = field(default_factory=list)
    fetched_outcomes: dict[int, str] = field(default_factory=dict)  # message id: outcome
    owners: live.Owners = field(default_factory=dict)  # of the messages receipts change
    groups: groups.Staged = field(default_factory=groups.Staged)
    group_read_ids: list[int] = field(default_factory=list)  # sender's messages now read


def check_envelopes(items: list[protocol.BatchItem], *, from_node: KnownNode) -> CheckedBatch:
    """Check, decrypt and resolve a batch from a node; reads only, no write.

    Every signature, decryption, payload check and read-receipt lookup happens here,
    before the write lock, so that one peer's batch holds this node's writer only for
    store_envelopes. Each refused envelope gets an error with a stable code, each
    accepted or already stored one a signed acknowledgement.
    """
    local_name = local_node_name()
    node_key = node_signing_key()
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
            if envelope.kind == "group_record":  # signed by the calling (home) node
                protocol.verify_envelope(from_node.verify_key, envelope.raw, item.signature)
                _check_group(batch, envelope, known, local_name=local_name, node_key=node_key)
                continue
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
            if envelope.kind in protocol.GROUP_ENVELOPE_KINDS:
                _check_group(
                    batch, envelope, known, local_name=local_name, node_key=node_key, sender=sender
                )
                continue
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
    for reader, author, envelope_id, outcome in batch.fetched:
        for message_id in _waiting_for_file(reader=reader, author=author, envelope_id=envelope_id):
            batch.fetched_outcomes[message_id] = outcome
    batch.owners = live.owners(
        [*batch.read_message_ids, *batch.fetched_outcomes, *batch.group_read_ids]
    )
    return batch


def _check_group(
    batch: CheckedBatch,
    envelope: protocol.Envelope,
    known: dict[str, _Stored],
    *,
    local_name: str,
    node_key: Any,
    sender: _SenderKeys | None = None,
) -> None:
    """A group envelope whose sender (person or home node) is verified: checked by
    messaging.groups, its writes staged; acknowledged once, again when sent again."""
    if envelope.recipient_node != local_name:
        raise protocol.ProtocolError(
            "wrong_recipient_node", "the envelope is addressed to another node"
        )
    digest = protocol.sha256_hex(envelope.raw)
    stored = known.get(envelope.id)
    if stored is not None:
        if (stored.sender, stored.sender_node, stored.kind) != (
            envelope.sender,
            envelope.sender_node,
            envelope.kind,
        ):
            raise _id_conflict()
        # The same envelope, or its sender sealed it again (keys changed) after the first
        # copy arrived: the stored bytes are acknowledged, which the sender kept.
        batch.acks.append(protocol.sign_ack_for_digest(node_key, envelope.id, stored.sha256))
        return
    if envelope.kind == "group_record":
        groups.check_record(batch.groups, envelope, from_node=envelope.sender_node)
    elif envelope.kind == "group_event":
        groups.check_event(batch.groups, envelope, sender_sign_key=sender.sign_key)
    elif envelope.kind == "group_message":
        copies, file = group_messages.check_message(
            batch.groups, envelope, sender_box_key=sender.box_key
        )
        if file is not None and copies:  # each recipient's copy has the file, pulled once
            _check_new_file_id(batch, file.file_id, group_message_id=copies[0].group_message_id)
            for index in range(len(batch.messages), len(batch.messages) + len(copies)):
                batch.files[index] = file
        batch.messages.extend(copies)
    else:
        batch.group_read_ids.extend(group_messages.check_read(batch.groups, envelope))
    batch.received.append(
        ReceivedEnvelope(
            envelope_id=envelope.id,
            sha256=digest,
            kind=envelope.kind,
            sender=envelope.sender,
            sender_node=envelope.sender_node,
        )
    )
    known[envelope.id] = _Stored(digest, envelope.sender, envelope.sender_node, envelope.kind)
    batch.acks.append(protocol.sign_ack(node_key, envelope.id, envelope.raw))


def store_envelopes(*, batch: CheckedBatch) -> dict:
    """Write what check_envelopes accepted, each envelope once, in the caller's write
    transaction; writes only. Returns {"acks": [...], "errors": [...]}."""
    if batch.received:
        try:
            with transaction.atomic():
                ReceivedEnvelope.objects.bulk_create(batch.received)
                batch.groups.store()  # before the messages: a new group's row first
                Message.objects.bulk_create(batch.messages)
                _store_files(batch)
                _mark_read(sorted(batch.read_message_ids), now=timezone.now())
                _apply_fetched(batch.fetched_outcomes, now=timezone.now())
                stored = {m.id: (m.owner_id, m.peer_username) for m in batch.messages}
                live.announce(stored, "new", known=stored)
                live.announce(
                    [*batch.read_message_ids, *batch.fetched_outcomes, *batch.group_read_ids],
                    "status",
                    known=batch.owners,
                )
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
        text, file = check_message_payload(payload)
        if file is not None:
            _check_new_file_id(batch, file.file_id)
            batch.files[len(batch.messages)] = file
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
    elif envelope.kind == "fetched":
        envelope_id, outcome = check_fetched_payload(payload)
        batch.fetched.append((envelope.sender, envelope.recipient, envelope_id, outcome))
    else:
        batch.receipts.append((envelope.sender, envelope.recipient, check_read_payload(payload)))
    batch.received.append(
        ReceivedEnvelope(
            envelope_id=envelope.id,
            sha256=digest,
            kind=envelope.kind,
            sender=envelope.sender,
            sender_node=envelope.sender_node,
        )
    )


def _check_new_file_id(
    batch: CheckedBatch, file_id: str, *, group_message_id: uuid.UUID | None = None
) -> None:
    """A received file's id names its copy here: one already taken (a sender reusing ids)
    is refused, so no file can take another's place. The copies of one group message
    share their file (and its id)."""
    taken = any(
        fields.file_id == file_id
        and (group_message_id is None or batch.messages[index].group_message_id != group_message_id)
        for index, fields in batch.files.items()
    )
    held = Attachment.objects.filter(file_id=file_id, message__direction=Message.Direction.IN)
    if group_message_id is not None:
        held = held.exclude(message__group_message_id=group_message_id)
    if taken or held.exists():
        raise protocol.ProtocolError("file_id_conflict", "another file has this id here", 409)


def _store_files(batch: CheckedBatch) -> None:
    """The attachments of the batch's messages, to be pulled from the sending node."""
    if not batch.files:
        return
    Attachment.objects.bulk_create(
        files.attachment_for(batch.messages[index], fields, node=batch.from_node, held=False)
        for index, fields in batch.files.items()
    )
    files.schedule_pull(batch.from_node)


def _sent_by(author: str, *, to: str):
    """author's own messages to the person `to`: the only ones a receipt from `to` (read,
    fetched) may change."""
    return Message.objects.filter(
        direction=Message.Direction.OUT,
        owner__username=author,
        sender_username=author,
        recipient_username=to,
    )


def _waiting_for_file(*, reader: str, author: str, envelope_id: str) -> list[int]:
    """author's message envelope_id to reader, if it has a file whose fate reader's node
    has not told yet: only reader's node may tell it."""
    return list(
        _sent_by(author, to=reader)
        .filter(
            envelope_id=envelope_id,
            # read too: its caption may be read before the file is held, or refused
            status__in=[Message.Status.QUEUED, Message.Status.SENT, Message.Status.READ],
            attachment__isnull=False,
        )
        .values_list("id", flat=True)
    )


def _apply_fetched(outcomes: dict[int, str], *, now) -> None:
    """Messages whose file the recipient's node now holds are delivered; refused, failed."""
    stored = [i for i, outcome in outcomes.items() if outcome == "stored"]
    # A read receipt in the same batch may have made it read already: that stays.
    Message.objects.filter(
        id__in=stored, status__in=[Message.Status.QUEUED, Message.Status.SENT]
    ).update(status=Message.Status.DELIVERED, delivered_at=now, error="")
    for message_id, outcome in outcomes.items():
        if outcome != "stored":  # the file never arrived, even if the caption was read
            Message.objects.filter(id=message_id).update(
                status=Message.Status.FAILED, error=outcome[:64]
            )
    Outbox.objects.filter(message_id__in=list(outcomes)).delete()


def _unread_by(*, reader: str, author: str, ids: list[str]) -> list[int]:
    """author's messages to reader among ids that reader has not read yet: only those a
    receipt from reader may mark read."""
    return list(
        _sent_by(author, to=reader)
        .filter(envelope_id__in=ids)
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
