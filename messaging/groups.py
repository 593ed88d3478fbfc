"""Group conversations on a node: their state and its changes (messages and receipts:
messaging.group_messages, which calls this).

The rules are peers.groups' (no Django); this module keeps their result and moves it:

- A change (create, rename, add, remove, promote, demote, leave) is an event its author
  signs. On the group's home node (its creator's) it is numbered and applied at once; from
  another node it goes to the home node in a group_event envelope. The home node sends
  every numbered change to each member's node (and to the node of someone it removes) in
  group_record envelopes, in order, each node from the first change it lacks.
- Who may send and who receives follow from that state (member spans by change number):
  messaging.group_messages asks this module.

Checks on receipt run without writing (check_*), the writes in the receiving batch's write
transaction (Staged.store), as for one-to-one envelopes (messaging.receiving).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Q
from django.utils import timezone
from nacl.signing import SigningKey

from accounts.keys import signing_key_for
from accounts.models import User, UserKeys
from peers import groups as wire
from peers import protocol
from peers.auth import write_transaction

from . import errors
from .models import (
    Group,
    GroupMember,
    GroupNodeSync,
    GroupRecord,
    Outbox,
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


def member_at(group: Group, username: str, node: str, seq: int) -> bool:
    return (
        GroupMember.objects.filter(group=group, username=username, node=node, joined_seq__lte=seq)
        .filter(Q(left_seq__isnull=True) | Q(left_seq__gt=seq))
        .exists()
    )


def head_at(group: Group, seq: int) -> str | None:
    """The hash of the group's record number seq as this node holds it (None if not)."""
    if seq == group.seq:
        return group.head
    records = GroupRecord.objects.filter(group=group, seq=seq)
    raw = records.values_list("record_raw", flat=True).first()
    return protocol.sha256_hex(bytes(raw)) if raw is not None else None


def removed_before(group: Group | None, username: str, created_ms: int) -> bool:
    """Whether this node applied username's last removal from the group more than the
    allowed clock skew before created_ms (a time on the sender's clock)."""
    if group is None:
        return False
    left_at = (
        GroupMember.objects.filter(group=group, username=username, left_at__isnull=False)
        .order_by("-left_seq")
        .values_list("left_at", flat=True)
        .first()
    )
    if left_at is None:
        return False
    return created_ms > left_at.timestamp() * 1000 + protocol.MAX_SKEW_S * 1000


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
            ).update(left_seq=after.seq, left_at=timezone.now())
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


def _refused(error: protocol.ProtocolError) -> GroupError:
    return GroupError(_CHANGE_REFUSED.get(error.code, error.message))


def _signed_event(author: User, group_id: str, action: str, **fields: Any) -> wire.SignedChange:
    try:
        raw, sig = wire.make_event(
            signing_key_for(author.keys),
            group=group_id,
            action=action,
            author=author.username,
            author_node=local_node_name(),
            created_ms=now_ms(),
            **fields,
        )
    except protocol.ProtocolError as error:  # too many people, say
        raise _refused(error) from None
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
        try:  # checked again: another admin's change may have come first
            record, record_sig, after = wire.number(
                before, change.event, home_sign_key=node_signing_key()
            )
        except protocol.ProtocolError as error:
            raise _refused(error) from None
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
    create_id = str(uuid.uuid4())
    change = _sendable(
        _signed_event(
            creator,
            wire.group_id_for(local_name, create_id),
            "create",
            name=name,
            members=members,
            event_id=create_id,
        )
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
        names = list(dict.fromkeys(usernames))
        if len(state.members) + len(names) > wire.MAX_GROUP_MEMBERS:
            raise GroupError(f"A group has at most {wire.MAX_GROUP_MEMBERS} members.")
        fields["members"] = _resolve_members(names, local_name=local_name)
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
        raise _refused(error) from None
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
    "invalid_field": "That change is not valid.",
}


# --- received from other nodes -------------------------------------------------------------
@dataclass
class Staged:
    """What check_* accepted in one batch, to write in its write transaction."""

    states: dict[str, tuple[Group | None, wire.GroupState | None]] = field(default_factory=dict)
    writes: list[Callable[[], None]] = field(default_factory=list)
    checked_at: dict[str, int] = field(default_factory=dict)  # group: seq when checked
    copies: set[tuple[str, str]] = field(default_factory=set)  # (recipient, message id)
    heads: dict[tuple[str, int], str] = field(default_factory=dict)  # of changes staged

    def head_at(self, group_id: str, seq: int) -> str | None:
        group, state = self.state(group_id)
        if state is not None and seq == state.seq:
            return state.head
        if (group_id, seq) in self.heads:
            return self.heads[(group_id, seq)]
        return head_at(group, seq) if group is not None else None

    def state(self, group_id: str) -> tuple[Group | None, wire.GroupState | None]:
        if group_id not in self.states:
            group = Group.objects.filter(group_id=group_id).first()
            self.states[group_id] = (group, load_state(group) if group is not None else None)
            self.checked_at[group_id] = group.seq if group is not None else 0
        return self.states[group_id]

    def store(self) -> None:
        """The staged writes, in the batch's write transaction; a group changed since it
        was checked (another request applied a change) refuses the batch, to be sent
        again and checked against the new state."""
        if self.checked_at:
            now = dict(
                Group.objects.filter(group_id__in=list(self.checked_at)).values_list(
                    "group_id", "seq"
                )
            )
            for group_id, seq in self.checked_at.items():
                if now.get(uuid.UUID(group_id), 0) != seq:
                    raise protocol.ProtocolError(
                        "conflict", "the group changed meanwhile, retry the batch", 409
                    )
        for write in self.writes:
            write()


def check_record(staged: Staged, envelope: protocol.Envelope, *, from_node: str) -> None:
    """A numbered change from the group's home node: applied in order. One this node has
    already is acknowledged again; one ahead of it is refused (group_behind), the home
    node sends it again after the ones before."""
    change = wire.parse_change_body(envelope.body, kind="group_record")
    group_id = change.event.group
    group, state = staged.state(group_id)
    if state is None and change.record.seq > 1:
        # Its first changes have not arrived (refused for a while, say): sent again after.
        raise protocol.ProtocolError("group_behind", "this node does not know the group yet", 409)
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
    staged.heads[(group_id, after.seq)] = after.head


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
    staged.heads[(key, after.seq)] = after.head


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
