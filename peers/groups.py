"""Groups on the wire, without Django: the signed changes to a group, the one order they
take effect in, the state they make, and a group message's content encrypted once with a
key sealed to each recipient.

messaging.groups stores, sends and receives them (docs/protocol.md, "Groups").

Order. A group has a home node: its creator's. An admin signs a change (an event) and
sends it to the home node, which checks it against the group's current state and, if it
holds, gives it the next sequence number in a record it signs, chained to the previous
record by hash. Every node applies the numbered events in sequence order, checking each
again (the author's signature and rights at that point, the home node's signature, the
chain); an event that does not hold is never numbered, so every node that has records 1 to
n has the same state. Two admins changing a group at once on two offices are ordered by
the home node, first come first numbered; the later one is checked against the state the
earlier one made (an admin removed by the first cannot act in the second).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nacl.exceptions import BadSignatureError, CryptoError
from nacl.public import Box, PrivateKey, PublicKey
from nacl.secret import SecretBox
from nacl.signing import SigningKey, VerifyKey
from nacl.utils import random

from .protocol import (
    MAX_CREATED_MS,
    VERSION,
    ProtocolError,
    b64d,
    b64e,
    canonical_json,
    parse_json_object,
    require,
    sha256_hex,
    validate_label,
    validate_node_name,
    validate_username,
)

DOMAIN_GROUP_EVENT = b"p2psocial/v1/group-event\x00"
DOMAIN_GROUP_SEQUENCE = b"p2psocial/v1/group-sequence\x00"
MAX_GROUP_MEMBERS = 256
MAX_GROUP_NAME_CHARS = 100
MAX_EVENT_BYTES = 64 * 1024
# create: name and the first members; rename: name; add, remove, promote, demote: members;
# leave: nothing (its author leaves).
ACTIONS = frozenset({"create", "rename", "add", "remove", "promote", "demote", "leave"})
_MEMBER_ACTIONS = frozenset({"create", "add", "remove", "promote", "demote"})


def _refuse(code: str, message: str, status: int = 400) -> ProtocolError:
    return ProtocolError(code, message, status)


def _uuid(value: object, *, field_name: str) -> str:
    if not isinstance(value, str):
        raise _refuse("invalid_field", f"{field_name} must be a lower-case UUID")
    try:
        if str(uuid.UUID(value)) != value:
            raise ValueError
    except ValueError:
        raise _refuse("invalid_field", f"{field_name} must be a lower-case UUID") from None
    return value


@dataclass(frozen=True)
class Member:
    username: str
    node: str


@dataclass(frozen=True)
class GroupEvent:
    """An admin's signed change to a group (or a member leaving it)."""

    group: str
    id: str
    action: str
    author: str
    author_node: str
    created_ms: int
    name: str | None
    members: tuple[Member, ...]
    raw: bytes

    @property
    def sha256(self) -> str:
        return sha256_hex(self.raw)


# A group's id is made from its home node and its create event's id, so that no other
# node can present a group of that id as its own to a node that does not know it yet.
GROUP_ID_NAMESPACE = uuid.UUID("5f0c7e2a-1d4b-4c8e-9a3f-6b2d8e1c4a70")


def group_id_for(home_node: str, create_event_id: str) -> str:
    return str(uuid.uuid5(GROUP_ID_NAMESPACE, f"{home_node}/{create_event_id}"))


def validate_group_name(value: object) -> str:
    """A group's name: 1 to MAX_GROUP_NAME_CHARS characters of one line (no control
    characters); HTML is text like any other, escaped where it is shown."""
    name = validate_label(value, field="name", max_chars=MAX_GROUP_NAME_CHARS)
    if not name.strip():
        raise _refuse("invalid_field", "name must not be blank")
    return name


def make_event(
    author_sign_key: SigningKey,
    *,
    group: str,
    action: str,
    author: str,
    author_node: str,
    created_ms: int,
    name: str | None = None,
    members: Iterable[Member] = (),
    event_id: str | None = None,
) -> tuple[bytes, bytes]:
    """The event's exact bytes and the author's signature over them (checked by
    parse_event as any received one is)."""
    body: dict[str, Any] = {
        "v": VERSION,
        "group": group,
        "id": event_id or str(uuid.uuid4()),
        "action": action,
        "author": author,
        "author_node": author_node,
        "created_ms": created_ms,
    }
    if name is not None:
        body["name"] = name
    if action in _MEMBER_ACTIONS:
        body["members"] = [{"username": m.username, "node": m.node} for m in members]
    raw = canonical_json(body)
    parse_event(raw)
    return raw, author_sign_key.sign(DOMAIN_GROUP_EVENT + raw).signature


def parse_event(raw: bytes) -> GroupEvent:
    """An event's fields, every one checked; anything else is a ProtocolError."""
    if len(raw) > MAX_EVENT_BYTES:
        raise _refuse(
            "event_too_large", f"a group event may be at most {MAX_EVENT_BYTES} bytes", 413
        )
    obj = parse_json_object(raw, what="group event")
    if obj.get("v") != VERSION or isinstance(obj.get("v"), bool):
        raise _refuse("unsupported_version", f"group event version must be {VERSION}")
    action = require(obj, "action", str)
    if action not in ACTIONS:
        raise _refuse("invalid_field", f"action must be one of {sorted(ACTIONS)}")
    allowed = {"v", "group", "id", "action", "author", "author_node", "created_ms"}
    if action in ("create", "rename"):
        allowed.add("name")
    if action in _MEMBER_ACTIONS:
        allowed.add("members")
    extra = set(obj) - allowed
    if extra:
        raise _refuse("invalid_field", f"unexpected fields for {action}: {sorted(extra)}")
    created_ms = require(obj, "created_ms", int)
    if isinstance(created_ms, bool) or not 0 <= created_ms < MAX_CREATED_MS:
        raise _refuse("invalid_field", "created_ms must be a positive 53-bit integer")
    name = validate_group_name(require(obj, "name", str)) if "name" in allowed else None
    members: tuple[Member, ...] = ()
    if action in _MEMBER_ACTIONS:
        listed = require(obj, "members", list)
        if len(listed) > MAX_GROUP_MEMBERS:
            raise _refuse("too_many_members", f"a group has at most {MAX_GROUP_MEMBERS} members")
        if not listed and action != "create":
            raise _refuse("invalid_field", "members must name someone")
        seen: set[str] = set()
        parsed = []
        for entry in listed:
            if not isinstance(entry, dict) or set(entry) != {"username", "node"}:
                raise _refuse("invalid_field", "each member is {username, node}")
            member = Member(validate_username(entry["username"]), validate_node_name(entry["node"]))
            if member.username in seen:
                raise _refuse("invalid_field", f"{member.username} is listed twice")
            seen.add(member.username)
            parsed.append(member)
        members = tuple(parsed)
    return GroupEvent(
        group=_uuid(obj.get("group"), field_name="group"),
        id=_uuid(obj.get("id"), field_name="id"),
        action=action,
        author=validate_username(require(obj, "author", str)),
        author_node=validate_node_name(require(obj, "author_node", str)),
        created_ms=created_ms,
        name=name,
        members=members,
        raw=raw,
    )


def verify_event(author_sign_key: bytes, raw: bytes, signature: bytes) -> None:
    try:
        VerifyKey(author_sign_key).verify(DOMAIN_GROUP_EVENT + raw, signature)
    except (BadSignatureError, ValueError, TypeError):
        raise _refuse("bad_event_signature", "group event signature does not verify") from None


# --- the home node's sequence -------------------------------------------------------------
@dataclass(frozen=True)
class SequenceRecord:
    """The home node's word that an event is the group's seq-th change, after prev."""

    group: str
    seq: int
    event_sha256: str
    prev: str  # sha256 of the previous record's bytes; "" for the first
    raw: bytes

    @property
    def sha256(self) -> str:
        return sha256_hex(self.raw)


def make_sequence_record(
    home_sign_key: SigningKey, *, group: str, seq: int, event_raw: bytes, prev: str
) -> tuple[bytes, bytes]:
    raw = canonical_json(
        {
            "v": VERSION,
            "group": group,
            "seq": seq,
            "event_sha256": sha256_hex(event_raw),
            "prev": prev,
        }
    )
    parse_sequence_record(raw)
    return raw, home_sign_key.sign(DOMAIN_GROUP_SEQUENCE + raw).signature


def parse_sequence_record(raw: bytes) -> SequenceRecord:
    if len(raw) > 1024:
        raise _refuse("invalid_field", "a sequence record is small")
    obj = parse_json_object(raw, what="sequence record")
    if obj.get("v") != VERSION or isinstance(obj.get("v"), bool):
        raise _refuse("unsupported_version", f"sequence record version must be {VERSION}")
    if set(obj) != {"v", "group", "seq", "event_sha256", "prev"}:
        raise _refuse("invalid_field", "a sequence record is {v, group, seq, event_sha256, prev}")
    seq = require(obj, "seq", int)
    if isinstance(seq, bool) or not 1 <= seq < MAX_CREATED_MS:
        raise _refuse("invalid_field", "seq must be a positive integer")
    digests = [require(obj, "event_sha256", str), require(obj, "prev", str)]
    for digest in digests:
        if digest and (len(digest) != 64 or digest.strip("0123456789abcdef")):
            raise _refuse("invalid_field", "hashes are 64 lower-case hex digits")
    if not digests[0] or (seq == 1) != (digests[1] == ""):
        raise _refuse("invalid_field", "only the first record has no prev")
    return SequenceRecord(
        group=_uuid(obj.get("group"), field_name="group"),
        seq=seq,
        event_sha256=digests[0],
        prev=digests[1],
        raw=raw,
    )


def verify_sequence_record(home_sign_key: bytes, raw: bytes, signature: bytes) -> None:
    try:
        VerifyKey(home_sign_key).verify(DOMAIN_GROUP_SEQUENCE + raw, signature)
    except (BadSignatureError, ValueError, TypeError):
        raise _refuse(
            "bad_sequence_signature", "sequence record signature does not verify"
        ) from None


# --- the state the numbered events make ---------------------------------------------------
@dataclass(frozen=True)
class MemberState:
    node: str
    admin: bool
    joined_seq: int  # the change that added them (1 for the first members)


@dataclass(frozen=True)
class GroupState:
    group: str
    home_node: str
    name: str
    seq: int  # the last change applied
    head: str  # sha256 of the last sequence record
    members: Mapping[str, MemberState] = field(default_factory=dict)
    left_at: Mapping[str, int] = field(default_factory=dict)  # last removal or leave, by person

    def is_admin(self, username: str) -> bool:
        member = self.members.get(username)
        return member is not None and member.admin


def apply(state: GroupState | None, event: GroupEvent, record: SequenceRecord) -> GroupState:
    """The state after the record's event, from the state before it (None for the first,
    which must be a create by its home node's person). Raises ProtocolError, state
    unchanged, for a record out of sequence or off the chain, or an event its author may
    not make at this point: the home node numbers none of those, and no node applies one."""
    if record.event_sha256 != event.sha256:
        raise _refuse("group_chain_broken", "the sequence record is for another event")
    if record.group != event.group:
        raise _refuse("group_mismatch", "the event is for another group")
    if state is None:
        if record.seq != 1 or event.action != "create":
            raise _refuse("group_out_of_order", "a group begins with its create, number 1", 409)
        if event.group != group_id_for(event.author_node, event.id):
            raise _refuse("group_mismatch", "a group's id is made from its home node and create")
        members = {m.username: MemberState(m.node, False, 1) for m in event.members}
        members[event.author] = MemberState(event.author_node, True, 1)
        if len(members) > MAX_GROUP_MEMBERS:
            raise _refuse("too_many_members", f"a group has at most {MAX_GROUP_MEMBERS} members")
        return GroupState(
            group=event.group,
            home_node=event.author_node,
            name=event.name or "",
            seq=1,
            head=record.sha256,
            members=members,
        )
    if record.group != state.group:
        raise _refuse("group_mismatch", "the record is for another group")
    if record.seq != state.seq + 1 or record.prev != state.head:
        raise _refuse("group_out_of_order", f"the next change is number {state.seq + 1}", 409)
    author = state.members.get(event.author)
    if author is None or author.node != event.author_node:
        raise _refuse("not_a_member", f"{event.author} is not a member of the group", 403)
    if event.action == "create":
        raise _refuse("group_exists", "the group was created already", 409)
    if event.action != "leave" and not author.admin:
        raise _refuse("not_an_admin", f"{event.author} is not an admin of the group", 403)
    members = dict(state.members)
    left_at = dict(state.left_at)
    name = state.name
    if event.action == "rename":
        name = event.name or name
    elif event.action == "add":
        for m in event.members:
            if m.username in members:
                raise _refuse("already_a_member", f"{m.username} is a member already", 409)
            members[m.username] = MemberState(m.node, False, record.seq)
        if len(members) > MAX_GROUP_MEMBERS:
            raise _refuse("too_many_members", f"a group has at most {MAX_GROUP_MEMBERS} members")
    elif event.action in ("remove", "leave"):
        gone = [event.author] if event.action == "leave" else [m.username for m in event.members]
        nodes = {m.username: m.node for m in event.members}
        for username in gone:
            if username not in members or nodes.get(username, members[username].node) != (
                members[username].node
            ):
                raise _refuse("not_a_member", f"{username} is not a member of the group", 409)
            del members[username]
            left_at[username] = record.seq
        if members and not any(m.admin for m in members.values()):
            # Nobody left to manage the group: its longest-standing member (then by name)
            # becomes its admin, the same one on every node.
            heir = min(members, key=lambda u: (members[u].joined_seq, u))
            members[heir] = MemberState(members[heir].node, True, members[heir].joined_seq)
    else:  # promote, demote
        for m in event.members:
            if m.username not in members or members[m.username].node != m.node:
                raise _refuse("not_a_member", f"{m.username} is not a member of the group", 409)
            current = members[m.username]
            members[m.username] = MemberState(
                current.node, event.action == "promote", current.joined_seq
            )
        if not any(m.admin for m in members.values()):
            raise _refuse("last_admin", "a group keeps at least one admin", 409)
    return GroupState(
        group=state.group,
        home_node=state.home_node,
        name=name,
        seq=record.seq,
        head=record.sha256,
        members=members,
        left_at=left_at,
    )


def number(
    state: GroupState | None, event: GroupEvent, *, home_sign_key: SigningKey
) -> tuple[SequenceRecord, bytes, GroupState]:
    """What the home node does with an event an admin sends it: check it against the
    current state and give it the next number (record, signature, the state after it).
    Raises ProtocolError, numbering nothing, when the event does not hold."""
    seq = 1 if state is None else state.seq + 1
    raw, signature = make_sequence_record(
        home_sign_key,
        group=event.group,
        seq=seq,
        event_raw=event.raw,
        prev="" if state is None else state.head,
    )
    record = parse_sequence_record(raw)
    return record, signature, apply(state, event, record)


def check_message(state: GroupState, *, sender: str, sender_node: str, at_seq: int) -> None:
    """Whether a group message from sender, written when the sender's node had applied
    changes up to at_seq, may be accepted by a node whose state is state: the sender is a
    member now and was when they wrote it. A message from before the sender's removal that
    arrives after it is refused: removal wins. A node behind the sender (at_seq > seq)
    answers group_behind and is sent the changes it lacks first."""
    if at_seq > state.seq:
        raise _refuse("group_behind", f"this node knows the group up to change {state.seq}", 409)
    member = state.members.get(sender)
    if member is None or member.node != sender_node or member.joined_seq > at_seq:
        raise _refuse("not_a_member", f"{sender} is not a member of the group", 403)


def recipients(state: GroupState, *, sender: str) -> dict[str, list[str]]:
    """Who a message from sender goes to, by node: every other member (one envelope per
    node carries the key sealed to each of its members)."""
    by_node: dict[str, list[str]] = {}
    for username, member in sorted(state.members.items()):
        if username != sender:
            by_node.setdefault(member.node, []).append(username)
    return by_node


# --- a message's content: encrypted once, its key sealed to each recipient ---------------
@dataclass(frozen=True)
class SealedContent:
    ciphertext: bytes  # SecretBox of the payload under a fresh key
    wraps: Mapping[str, bytes]  # the key, in a Box from the sender to each recipient


def seal_content(
    payload: Mapping[str, Any],
    *,
    sender_box_key: PrivateKey,
    recipient_box_keys: Mapping[str, bytes],
) -> SealedContent:
    """Encrypt payload once under a fresh key and seal that key to each recipient's public
    box key, authenticated as the sender's (as one-to-one messages are)."""
    key = random(SecretBox.KEY_SIZE)
    ciphertext = bytes(SecretBox(key).encrypt(canonical_json(dict(payload))))
    wraps = {
        username: bytes(Box(sender_box_key, PublicKey(public)).encrypt(key))
        for username, public in recipient_box_keys.items()
    }
    return SealedContent(ciphertext=ciphertext, wraps=wraps)


def open_content(
    ciphertext: bytes, wrap: bytes, *, recipient_box_key: PrivateKey, sender_box_key: bytes
) -> dict[str, Any]:
    """The payload, with the recipient's key: a modified wrap or ciphertext, or a wrap for
    someone else, fails as decrypt_failed."""
    try:
        key = Box(recipient_box_key, PublicKey(sender_box_key)).decrypt(wrap)
        plaintext = SecretBox(key).decrypt(ciphertext)
    except (CryptoError, ValueError, TypeError):
        raise _refuse(
            "decrypt_failed", "the group message does not decrypt for the recipient"
        ) from None
    return parse_json_object(plaintext, what="payload")


def encode_wraps(wraps: Mapping[str, bytes]) -> dict[str, str]:
    return {username: b64e(wrap) for username, wrap in sorted(wraps.items())}


def decode_wraps(value: object) -> dict[str, bytes]:
    if not isinstance(value, dict) or len(value) > MAX_GROUP_MEMBERS:
        raise _refuse("invalid_field", f"wraps must map at most {MAX_GROUP_MEMBERS} usernames")
    return {
        validate_username(username): b64d(wrap, field="wraps") for username, wrap in value.items()
    }


# --- the bodies of group envelopes (peers.protocol.parse_envelope checks the rest) -------
MAX_READ_IDS = 500


def _exact(body: Mapping[str, Any], fields: set[str], *, kind: str) -> None:
    if set(body) != fields:
        raise _refuse("invalid_field", f"a {kind} body is {{{', '.join(sorted(fields))}}}")


@dataclass(frozen=True)
class SignedChange:
    """An event with its author's signature and, once numbered, the home node's record."""

    event: GroupEvent
    event_sig: bytes
    record: SequenceRecord | None = None
    record_sig: bytes | None = None


def event_body(event_raw: bytes, event_sig: bytes) -> dict[str, str]:
    return {"event": b64e(event_raw), "event_sig": b64e(event_sig)}


def record_body(
    event_raw: bytes, event_sig: bytes, record_raw: bytes, record_sig: bytes
) -> dict[str, str]:
    return {
        **event_body(event_raw, event_sig),
        "record": b64e(record_raw),
        "record_sig": b64e(record_sig),
    }


def parse_change_body(body: Mapping[str, Any], *, kind: str) -> SignedChange:
    """A group_event body (an event to number) or a group_record body (a numbered one);
    signatures are the receiver's to check, against keys it knows."""
    numbered = kind == "group_record"
    fields = {"event", "event_sig"} | ({"record", "record_sig"} if numbered else set())
    _exact(body, fields, kind=kind)
    event = parse_event(b64d(body["event"], field="event"))
    event_sig = b64d(body["event_sig"], field="event_sig", length=64)
    if not numbered:
        return SignedChange(event, event_sig)
    record = parse_sequence_record(b64d(body["record"], field="record"))
    record_sig = b64d(body["record_sig"], field="record_sig", length=64)
    return SignedChange(event, event_sig, record, record_sig)


@dataclass(frozen=True)
class MessageBody:
    group: str
    message: str  # the message's id, the same in every node's envelope
    at_seq: int  # the sender's node had applied the group's changes up to this one
    head: str  # sha256 of that change's sequence record: the same history on both sides
    ciphertext: bytes
    wraps: Mapping[str, bytes]  # the key sealed to each recipient on the receiving node


def message_body(
    *,
    group: str,
    message: str,
    at_seq: int,
    head: str,
    ciphertext: bytes,
    wraps: Mapping[str, bytes],
) -> dict[str, Any]:
    return {
        "group": group,
        "message": message,
        "at_seq": at_seq,
        "head": head,
        "ciphertext": b64e(ciphertext),
        "wraps": encode_wraps(wraps),
    }


def parse_message_body(body: Mapping[str, Any]) -> MessageBody:
    _exact(
        body, {"group", "message", "at_seq", "head", "ciphertext", "wraps"}, kind="group_message"
    )
    at_seq = body["at_seq"]
    if not isinstance(at_seq, int) or isinstance(at_seq, bool) or not 1 <= at_seq < 2**31:
        raise _refuse("invalid_field", "at_seq must be a positive integer")
    head = body["head"]
    if not isinstance(head, str) or len(head) != 64 or head.strip("0123456789abcdef"):
        raise _refuse("invalid_field", "head is 64 lower-case hex digits")
    wraps = decode_wraps(body["wraps"])
    if not wraps:
        raise _refuse("invalid_field", "a group message names at least one recipient")
    return MessageBody(
        group=_uuid(body["group"], field_name="group"),
        message=_uuid(body["message"], field_name="message"),
        at_seq=at_seq,
        head=head,
        ciphertext=b64d(body["ciphertext"], field="ciphertext"),
        wraps=wraps,
    )


@dataclass(frozen=True)
class ReadBody:
    group: str
    author: str
    ids: tuple[str, ...]  # message ids the sender of the receipt has read


def read_body(*, group: str, author: str, ids: Iterable[str]) -> dict[str, Any]:
    return {"group": group, "author": author, "ids": sorted(ids)}


def parse_read_body(body: Mapping[str, Any]) -> ReadBody:
    _exact(body, {"group", "author", "ids"}, kind="group_read")
    ids = body["ids"]
    if not isinstance(ids, list) or not 1 <= len(ids) <= MAX_READ_IDS:
        raise _refuse("invalid_field", f"ids lists 1 to {MAX_READ_IDS} message ids")
    return ReadBody(
        group=_uuid(body["group"], field_name="group"),
        author=validate_username(body["author"]),
        ids=tuple(_uuid(i, field_name="ids") for i in ids),
    )
