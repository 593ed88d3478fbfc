"""Group conversations on a node: their state, changes, messages, receipts.

The rules are peers.groups' (no Django); this module keeps their result and moves it:

- A change (create, rename, add, remove, promote, demote, leave) is an event its author
  signs. On the group's home node (its creator's) it is numbered and applied at once; from
  another node it goes to the home node in a group_event envelope. The home node sends
  every numbered change to each member's node (and to the node of someone it removes) in
  group_record envelopes, in order, each node from the first change it lacks.
- A message is stored once for its sender (direction out) and sent as one group_message
  envelope per node of its recipients: the content encrypted once, its key sealed to each
  recipient there. The receiving node stores a copy per recipient. Acknowledgements and
  group_read receipts fill the sender's per-recipient GroupDelivery rows.

Checks on receipt run without writing (check_*), the writes in the receiving batch's write
transaction (Staged.store), as for one-to-one envelopes (messaging.receiving).
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Count, Q
from django.utils import timezone
from nacl.signing import SigningKey

from accounts.keys import box_key_for, signing_key_for
from accounts.models import User, UserKeys
from peers import groups as wire
from peers import protocol
from peers.auth import write_transaction

from . import errors, files, live, queries
from .content import FileFields, check_message_payload, validate_caption, validate_text
from .models import (
    Attachment,
    Group,
    GroupDelivery,
    GroupMember,
    GroupNodeSync,
    GroupRecord,
    Message,
    Outbox,
    group_conversation_key,
)
from .outbox import (
    local_node_name,
    node_signing_key,
    now_ms,
    outbox_row,
    resolve_recipient,
    schedule_delivery,
)

logger = logging.getLogger(__name__)

GROUP_ROW_KINDS = ("group_message",)  # outbox rows that carry a group message


class GroupError(errors.MessagingError):
    """A change or message the person may not make; the text says why."""

    code = "group_refused"


# --- state ---------------------------------------------------------------------------------
def load_state(group: Group) -> wire.GroupState:
    members = {
        m.username: wire.MemberState(m.node, m.admin, m.joined_seq)
        for m in GroupMember.objects.filter(group=group, left_seq__isnull=True)
    }
    return wire.GroupState(
        group=str(group.group_id),
        home_node=group.home_node,
        name=group.name,
        seq=group.seq,
        head=group.head,
        members=members,
    )


def groups_of(user: User) -> list[Group]:
    """The groups the person is a member of now, newest first."""
    ids = GroupMember.objects.filter(
        username=user.username, node=local_node_name(), left_seq__isnull=True
    ).values("group_id")
    return list(Group.objects.filter(id__in=ids).order_by("-id"))


def group_for(user: User, group_id: Any) -> Group | None:
    """The group if the person is (or was) a member of it on this node, else None."""
    try:
        group_uuid = uuid.UUID(str(group_id))
    except ValueError:
        return None
    return Group.objects.filter(
        group_id=group_uuid, members__username=user.username, members__node=local_node_name()
    ).first()


def is_member(group: Group, username: str) -> bool:
    return GroupMember.objects.filter(
        group=group, username=username, node=local_node_name(), left_seq__isnull=True
    ).exists()


def _member_at(group: Group, username: str, node: str, seq: int) -> bool:
    return (
        GroupMember.objects.filter(group=group, username=username, node=node, joined_seq__lte=seq)
        .filter(Q(left_seq__isnull=True) | Q(left_seq__gt=seq))
        .exists()
    )


def _store_change(
    group: Group | None,
    before: wire.GroupState | None,
    after: wire.GroupState,
    change: wire.SignedChange,
) -> Group:
    """Write one numbered change and the state it makes (inside a write transaction)."""
    if group is None:
        group = Group.objects.create(
            group_id=uuid.UUID(after.group),
            home_node=after.home_node,
            name=after.name,
            seq=after.seq,
            head=after.head,
        )
    else:
        Group.objects.filter(id=group.id).update(name=after.name, seq=after.seq, head=after.head)
        group.name, group.seq, group.head = after.name, after.seq, after.head
    GroupRecord.objects.create(
        group=group,
        seq=after.seq,
        event_raw=change.event.raw,
        event_sig=change.event_sig,
        record_raw=change.record.raw,
        record_sig=change.record_sig,
    )
    old = dict(before.members) if before is not None else {}
    for username, member in old.items():
        if username not in after.members:
            GroupMember.objects.filter(
                group=group, username=username, left_seq__isnull=True
            ).update(left_seq=after.seq)
        elif after.members[username].admin != member.admin:
            GroupMember.objects.filter(
                group=group, username=username, left_seq__isnull=True
            ).update(admin=after.members[username].admin)
    GroupMember.objects.bulk_create(
        [
            GroupMember(
                group=group,
                username=username,
                node=member.node,
                admin=member.admin,
                joined_seq=member.joined_seq,
            )
            for username, member in after.members.items()
            if username not in old
        ]
    )
    return group


def _fan_out(group: Group, state: wire.GroupState, also: Iterable[str] = ()) -> set[str]:
    """On the home node: queue the records each member's node (and the nodes in also:
    those of people just removed) has not been sent yet. Returns the nodes queued for."""
    local_name = local_node_name()
    nodes = ({m.node for m in state.members.values()} | set(also)) - {local_name}
    if not nodes:
        return set()
    synced = {s.node: s for s in GroupNodeSync.objects.filter(group=group, node__in=nodes)}
    lowest = min((synced[n].sent_seq if n in synced else 0) for n in nodes)
    records = list(GroupRecord.objects.filter(group=group, seq__gt=lowest).order_by("seq"))
    node_key = node_signing_key()
    rows = []
    for node in sorted(nodes):
        sent = synced[node].sent_seq if node in synced else 0
        for record in records:
            if record.seq <= sent:
                continue
            envelope_id = protocol.new_envelope_id()
            sealed = protocol.sign_group_envelope(
                node_key,
                envelope_id=envelope_id,
                kind="group_record",
                sender="",
                sender_node=local_name,
                recipient_node=node,
                created_ms=now_ms(),
                body=wire.record_body(
                    bytes(record.event_raw),
                    bytes(record.event_sig),
                    bytes(record.record_raw),
                    bytes(record.record_sig),
                ),
            )
            rows.append(
                outbox_row(sealed, envelope_id=envelope_id, kind="group_record", destination=node)
            )
        if node in synced:
            GroupNodeSync.objects.filter(id=synced[node].id).update(sent_seq=state.seq)
        else:
            GroupNodeSync.objects.create(group=group, node=node, sent_seq=state.seq)
    Outbox.objects.bulk_create(rows)
    for node in sorted(nodes):
        schedule_delivery(node)
    return nodes


def _announce_group(group: Group, usernames: Iterable[str] = ()) -> None:
    """Tell the local members' pages (and those of people who just left) that the group
    changed: one conversation.group event each, after commit."""
    from p2psocial import events

    local_name = local_node_name()
    names = set(usernames) | set(
        GroupMember.objects.filter(group=group, node=local_name, left_seq__isnull=True).values_list(
            "username", flat=True
        )
    )
    ids = User.objects.filter(username__in=names).values_list("id", flat=True)
    events.publish_many_on_commit(
        [(i, "conversation.group", {"peer": group.conversation_key, "ids": []}) for i in ids]
    )


# --- changes made here -------------------------------------------------------------------
def _resolve_members(usernames: Iterable[str], *, local_name: str) -> list[wire.Member]:
    members = []
    for username in usernames:
        if username in {m.username for m in members}:
            continue
        if UserKeys.objects.filter(user__username=username, user__is_active=True).exists():
            members.append(wire.Member(username, local_name))
            continue
        try:
            members.append(wire.Member(username, resolve_recipient(username).node))
        except errors.UnknownRecipient:
            raise GroupError(f"There is nobody called {username!r} in the directory.") from None
    return members


def _signed_event(author: User, group_id: str, action: str, **fields: Any) -> wire.SignedChange:
    raw, sig = wire.make_event(
        signing_key_for(author.keys),
        group=group_id,
        action=action,
        author=author.username,
        author_node=local_node_name(),
        created_ms=now_ms(),
        **fields,
    )
    return wire.SignedChange(wire.parse_event(raw), sig)


# An event travels in base64 inside a group_record envelope of MAX_ENVELOPE_BYTES.
MAX_SENDABLE_EVENT_BYTES = (protocol.MAX_ENVELOPE_BYTES - 2048) * 3 // 4


def _sendable(change: wire.SignedChange) -> wire.SignedChange:
    if len(change.event.raw) > MAX_SENDABLE_EVENT_BYTES:
        raise GroupError("Too many people at once: add them in two or more steps.")
    return change


def _number_here(group: Group | None, change: wire.SignedChange, also=()) -> Group:
    """On the home node: number the change, store it, send it on (one transaction)."""
    with write_transaction():
        if group is not None:
            group = Group.objects.get(id=group.id)  # the current state, under the lock
        before = load_state(group) if group is not None else None
        record, record_sig, after = wire.number(
            before, change.event, home_sign_key=node_signing_key()
        )
        numbered = wire.SignedChange(change.event, change.event_sig, record, record_sig)
        group = _store_change(group, before, after, numbered)
        gone = {u for u in (before.members if before else {}) if u not in after.members}
        _fan_out(group, after, also={before.members[u].node for u in gone} | set(also))
        _announce_group(group, gone)
    return group


def create_group(*, creator: User, name: str, usernames: Iterable[str]) -> Group:
    """A new group, created by creator (its admin) on this node (its home), with these
    people from any office."""
    try:
        name = wire.validate_group_name(name)
    except protocol.ProtocolError:
        raise GroupError(
            "A group's name is 1 to 100 characters on one line, not only spaces."
        ) from None
    local_name = local_node_name()
    others = [u for u in dict.fromkeys(usernames) if u != creator.username]
    if not others:
        raise GroupError("Choose at least one other person for the group.")
    if len(others) >= wire.MAX_GROUP_MEMBERS:
        raise GroupError(f"A group has at most {wire.MAX_GROUP_MEMBERS} members.")
    members = _resolve_members(others, local_name=local_name)
    change = _sendable(
        _signed_event(creator, str(uuid.uuid4()), "create", name=name, members=members)
    )
    group = _number_here(None, change)
    logger.info("group created", extra={"group": str(group.group_id), "members": len(members)})
    return group


def change_group(
    *,
    author: User,
    group: Group,
    action: str,
    usernames: Iterable[str] = (),
    name: str | None = None,
) -> bool:
    """An admin's change (a member's leave). Applied at once on the group's home node
    (returns True); from another node sent there to be numbered (returns False: it takes
    effect when the home node's record comes back). Raises GroupError when the change
    does not hold against the state this node knows."""
    local_name = local_node_name()
    state = load_state(group)
    fields: dict[str, Any] = {}
    if action == "rename":
        try:
            fields["name"] = wire.validate_group_name(name)
        except protocol.ProtocolError:
            raise GroupError(
                "A group's name is 1 to 100 characters on one line, not only spaces."
            ) from None
    elif action == "add":
        fields["members"] = _resolve_members(usernames, local_name=local_name)
    elif action in ("remove", "promote", "demote"):
        names = list(dict.fromkeys(usernames))
        if not names:
            raise GroupError("Choose a member first.")
        unknown = [u for u in names if u not in state.members]
        if unknown:
            raise GroupError(f"{unknown[0]} is not a member of this group.")
        fields["members"] = [wire.Member(u, state.members[u].node) for u in names]
    elif action != "leave":
        raise GroupError("That change does not exist.")
    change = _sendable(_signed_event(author, str(group.group_id), action, **fields))
    # Checked here first, so that the person hears at once what the home node would say.
    try:
        record = wire.SequenceRecord(
            group=state.group,
            seq=state.seq + 1,
            event_sha256=change.event.sha256,
            prev=state.head,
            raw=b"",
        )
        wire.apply(state, change.event, record)
    except protocol.ProtocolError as error:
        raise GroupError(_CHANGE_REFUSED.get(error.code, error.message)) from None
    if group.home_node == local_name:
        _number_here(group, change)
        return True
    envelope_id = protocol.new_envelope_id()
    sealed = protocol.sign_group_envelope(
        signing_key_for(author.keys),
        envelope_id=envelope_id,
        kind="group_event",
        sender=author.username,
        sender_node=local_name,
        recipient_node=group.home_node,
        created_ms=now_ms(),
        body=wire.event_body(change.event.raw, change.event_sig),
    )
    with write_transaction():
        outbox_row(
            sealed, envelope_id=envelope_id, kind="group_event", destination=group.home_node
        ).save()
        schedule_delivery(group.home_node)
    return False


_CHANGE_REFUSED = {
    "not_an_admin": "Only the group's admins can change it.",
    "not_a_member": "That person is not a member of this group.",
    "already_a_member": "That person is a member already.",
    "last_admin": "A group keeps at least one admin: make someone else admin first.",
    "too_many_members": f"A group has at most {wire.MAX_GROUP_MEMBERS} members.",
}


# --- messages sent from here ---------------------------------------------------------------
class _TooLarge(Exception):
    """An envelope would pass MAX_ENVELOPE_BYTES."""


def _seal_for_nodes(
    *,
    sender: User,
    group: Group,
    message_id: str,
    at_seq: int,
    created_ms: int,
    payload: dict[str, Any],
    by_node: dict[str, list[str]],
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
            rows, unreachable = _seal_for_nodes(
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
            group_message_id=message_id,
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
    is, read once every one read it, failed while one failed, else queued."""
    summary = delivery_summary(message_ids)
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
        new_rows = []
        for with_preview in (True, False):
            try:
                new_rows, _ = _seal_for_nodes(
                    sender=message.owner,
                    group=message.group,
                    message_id=str(message.group_message_id),
                    at_seq=body.at_seq,
                    created_ms=message.created_ms,
                    payload=_payload(message, with_preview=with_preview),
                    by_node={row.destination: sorted(body.wraps)},
                    envelope_ids={row.destination: str(row.envelope_id)},
                )
                break
            except _TooLarge:
                continue
        if not new_rows:
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
        fresh, unreachable = _seal_for_nodes(
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


# --- received from other nodes -------------------------------------------------------------
@dataclass
class Staged:
    """What check_* accepted in one batch, to write in its write transaction."""

    states: dict[str, tuple[Group | None, wire.GroupState | None]] = field(default_factory=dict)
    writes: list[Callable[[], None]] = field(default_factory=list)

    def state(self, group_id: str) -> tuple[Group | None, wire.GroupState | None]:
        if group_id not in self.states:
            group = Group.objects.filter(group_id=group_id).first()
            self.states[group_id] = (group, load_state(group) if group is not None else None)
        return self.states[group_id]

    def store(self) -> None:
        for write in self.writes:
            write()


def check_record(staged: Staged, envelope: protocol.Envelope, *, from_node: str) -> None:
    """A numbered change from the group's home node: applied in order. One this node has
    already is acknowledged again; one ahead of it is refused (group_behind), the home
    node sends it again after the ones before."""
    change = wire.parse_change_body(envelope.body, kind="group_record")
    group_id = change.event.group
    group, state = staged.state(group_id)
    home = state.home_node if state is not None else change.event.author_node
    if from_node != home:
        raise protocol.ProtocolError(
            "not_home_node", "only the group's home node sends its changes", 403
        )
    # Both signatures: the home node's over the record (the calling node's key, checked
    # with the request), the author's over the event (their key in the directory).
    verify_key = _node_key(from_node)
    wire.verify_sequence_record(verify_key, change.record.raw, change.record_sig)
    _verify_author(change)
    if state is not None and change.record.seq <= state.seq:
        kept = GroupRecord.objects.filter(group=group, seq=change.record.seq).first()
        if kept is not None and bytes(kept.record_raw) == change.record.raw:
            return  # had it: acknowledged again
        if kept is None and change.record.seq == state.seq and change.record.sha256 == state.head:
            return  # staged in this very batch
        raise protocol.ProtocolError("group_chain_broken", "another change under this number", 409)
    if change.record.seq > (state.seq if state is not None else 0) + 1:
        # An earlier one has not arrived (refused for a while, say): the home node sends
        # this one again, after it.
        known = state.seq if state is not None else 0
        raise protocol.ProtocolError(
            "group_behind", f"this node knows the group up to change {known}", 409
        )
    after = wire.apply(state, change.event, change.record)
    gone = {u for u in (state.members if state else {}) if u not in after.members}

    def write(before=state, after=after, change=change, key=group_id) -> None:
        current = staged.states[key][0]
        stored = _store_change(current, before, after, change)
        staged.states[key] = (stored, staged.states[key][1])
        _announce_group(stored, gone)

    staged.writes.append(write)
    staged.states[group_id] = (group, after)


def check_event(staged: Staged, envelope: protocol.Envelope, *, sender_sign_key: bytes) -> None:
    """A change an admin on another node sends this node, the group's home: numbered and
    sent to every member's node, or refused as the rules say (not_an_admin, ...)."""
    change = wire.parse_change_body(envelope.body, kind="group_event")
    event = change.event
    if (event.author, event.author_node) != (envelope.sender, envelope.sender_node):
        raise protocol.ProtocolError("invalid_field", "the event's author is the sender", 403)
    wire.verify_event(sender_sign_key, event.raw, change.event_sig)
    group, state = staged.state(event.group)
    if state is None or state.home_node != local_node_name():
        raise protocol.ProtocolError("unknown_group", "this node is not the group's home", 404)
    if event.action == "add":
        for member in event.members:
            _check_known(member)
    record, record_sig, after = wire.number(state, event, home_sign_key=node_signing_key())
    numbered = wire.SignedChange(event, change.event_sig, record, record_sig)
    gone = {u: state.members[u].node for u in state.members if u not in after.members}
    key = event.group

    def write(before=state, after=after, numbered=numbered) -> None:
        stored = _store_change(staged.states[key][0], before, after, numbered)
        staged.states[key] = (stored, staged.states[key][1])
        _fan_out(stored, after, also=set(gone.values()))
        _announce_group(stored, gone)

    staged.writes.append(write)
    staged.states[key] = (group, after)


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
    local_name = local_node_name()
    keys = {
        k.user.username: k
        for k in UserKeys.objects.filter(
            user__username__in=list(body.wraps), user__is_active=True
        ).select_related("user")
    }
    copies = []
    payload = None
    for username, wrap in sorted(body.wraps.items()):
        member = state.members.get(username)
        if member is not None and member.node == local_name and member.joined_seq <= body.at_seq:
            pass  # a member now, since before the message
        elif group is None or not _member_at(group, username, local_name, body.at_seq):
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
        copies.append(
            Message(
                envelope_id=uuid.uuid5(uuid.UUID(body.message), username),
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
                group_message_id=body.message,
            )
        )
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


def _node_key(name: str) -> bytes:
    from peers.models import PeerNode

    if name == local_node_name():
        return bytes(node_signing_key().verify_key)
    peer = PeerNode.objects.filter(name=name, active=True).first()
    if peer is None:
        raise protocol.ProtocolError("unknown_node", "the home node is not known here", 403)
    return bytes(peer.sign_key)


def _verify_author(change: wire.SignedChange) -> None:
    """The event's signature, with its author's key as this node knows it. The home node
    checked it when it numbered the event, and its signed record is what a member's node
    relies on: an author this node does not know (any more), or whose key changed since,
    is logged, not refused, so that a group never stalls on an old change."""
    from peers.models import DirectoryUser

    event = change.event
    if event.author_node == local_node_name():
        keys = UserKeys.objects.filter(user__username=event.author).first()
        key = bytes(keys.sign_public) if keys is not None else None
    else:
        entry = DirectoryUser.objects.filter(
            username=event.author, node__name=event.author_node
        ).first()
        key = bytes(entry.sign_key) if entry is not None else None
    try:
        if key is None:
            raise protocol.ProtocolError("unknown_sender", "the event's author is not known")
        wire.verify_event(key, event.raw, change.event_sig)
    except protocol.ProtocolError as error:
        logger.info(
            "group event author not checked here",
            extra={"author": event.author, "code": error.code},
        )


def _check_known(member: wire.Member) -> None:
    """A person added must be in this node's directory, on the node the event says."""
    from peers.models import DirectoryUser

    if member.node == local_node_name():
        known = UserKeys.objects.filter(
            user__username=member.username, user__is_active=True
        ).exists()
    else:
        known = DirectoryUser.objects.filter(
            username=member.username, node__name=member.node, listed=True
        ).exists()
    if not known:
        raise protocol.ProtocolError(
            "unknown_member", f"{member.username} is not in the directory on {member.node}", 403
        )


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


def resign_records(node_key: SigningKey) -> int:
    """After this node's signing key changed (inside that transaction): the records of the
    groups it is home to signed again with the new key, as nodes that join later check
    them, and the waiting group_record envelopes with them (their earlier bytes kept: a
    node that stored one acknowledges those). Returns how many records."""
    from peers.identity import local_node

    home = local_node().name
    records = list(GroupRecord.objects.filter(group__home_node=home))
    for record in records:
        record.record_sig = node_key.sign(
            wire.DOMAIN_GROUP_SEQUENCE + bytes(record.record_raw)
        ).signature
    GroupRecord.objects.bulk_update(records, ["record_sig"], batch_size=500)
    by_digest = {wire.parse_sequence_record(bytes(r.record_raw)).sha256: r for r in records}
    now = timezone.now()
    for row in Outbox.objects.filter(kind="group_record"):
        envelope = protocol.parse_envelope(bytes(row.raw))
        change = wire.parse_change_body(envelope.body, kind="group_record")
        record = by_digest.get(change.record.sha256)
        if record is None:
            continue
        sealed = protocol.sign_group_envelope(
            node_key,
            envelope_id=envelope.id,
            kind="group_record",
            sender="",
            sender_node=envelope.sender_node,
            recipient_node=envelope.recipient_node,
            created_ms=envelope.created_ms,
            body=wire.record_body(
                change.event.raw,
                change.event_sig,
                change.record.raw,
                bytes(record.record_sig),
            ),
        )
        row.earlier_sealings = [*row.earlier_sealings, protocol.b64e(bytes(row.raw))]
        row.raw, row.signature, row.next_attempt_at = sealed.raw, sealed.signature, now
        row.save(update_fields=["raw", "signature", "next_attempt_at", "earlier_sealings"])
    logger.info("group records signed again", extra={"records": len(records)})
    return len(records)
