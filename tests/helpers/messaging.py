"""Arrange messaging tests in one database: this node, remote nodes and remote people
as they appear in the directory cache, and envelopes sealed the way a remote node would."""

from __future__ import annotations

import itertools
import time
import uuid
from dataclasses import dataclass
from typing import Any

from django.test import Client
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from accounts import services as account_services
from accounts.crypto import encrypt_at_rest
from accounts.models import User
from peers import protocol
from peers.models import DirectoryUser, NodeIdentity, PeerNode

INBOX = "/api/v1/inbox"
_counter = itertools.count(1)


def join_local_node(name: str = "hq") -> SigningKey:
    """This node's identity row, as manage.py join_network leaves it."""
    key = SigningKey.generate()
    NodeIdentity.objects.update_or_create(
        pk=1,
        defaults=dict(
            name=name,
            public_url="http://127.0.0.1:8001",
            sign_public=bytes(key.verify_key),
            sign_private_encrypted=encrypt_at_rest(bytes(key)),
            login_server_url="http://127.0.0.1:8000",
            login_server_key=bytes(SigningKey.generate().verify_key),
        ),
    )
    return key


@dataclass
class RemoteNode:
    name: str
    key: SigningKey
    row: PeerNode


def make_remote_node(name: str = "branch", url: str = "http://127.0.0.1:9") -> RemoteNode:
    """A peer node in the directory cache; port 9 on loopback refuses connections."""
    key = SigningKey.generate()
    row = PeerNode.objects.create(name=name, url=url, sign_key=bytes(key.verify_key), online=True)
    return RemoteNode(name, key, row)


@dataclass
class RemotePerson:
    username: str
    node: RemoteNode
    sign: SigningKey
    box: PrivateKey


def make_remote_person(
    node: RemoteNode, username: str | None = None, *, expires: int | None = None
) -> RemotePerson:
    """A person of a remote node in the directory cache; their record expires in an hour
    unless `expires` (Unix seconds) says otherwise."""
    username = username or f"remote{next(_counter)}"
    sign, box = SigningKey.generate(), PrivateKey.generate()
    now = int(time.time())
    record = protocol.make_user_record(
        username=username,
        node=node.name,
        node_url=node.row.url,
        sign_key=bytes(sign.verify_key),
        box_key=bytes(box.public_key),
        full_name=username.title(),
        position="",
        issued=now,
        expires=now + 3600 if expires is None else expires,
    )
    DirectoryUser.objects.create(
        username=username,
        node=node.row,
        sign_key=bytes(sign.verify_key),
        box_key=bytes(box.public_key),
        full_name=username.title(),
        record=record,
        record_sig=bytes(64),
    )
    return RemotePerson(username, node, sign, box)


def make_local_person(username: str | None = None) -> User:
    username = username or f"local{next(_counter)}"
    return account_services.create_person(
        username=username, password="x", full_name=username.title(), validate=False
    )


def seal_from(
    person: RemotePerson,
    to: User,
    payload: dict[str, Any] | None = None,
    *,
    kind: str = "message",
    **overrides: Any,
) -> protocol.SignedEnvelope:
    """An envelope from a remote person to a local user, exactly as their node seals it."""
    args: dict[str, Any] = dict(
        sender_sign_key=person.sign,
        sender_box_key=person.box,
        recipient_box_key=bytes(to.keys.box_public),
        envelope_id=protocol.new_envelope_id(),
        kind=kind,
        sender=person.username,
        sender_node=person.node.name,
        recipient=to.username,
        recipient_node="hq",
        created_ms=int(time.time() * 1000),
        payload={"text": "hello"} if payload is None else payload,
    )
    args.update(overrides)
    return protocol.seal_envelope(**args)


def post_signed(
    client: Client,
    node: RemoteNode,
    body: bytes,
    *,
    path: str = INBOX,
    timestamp: int | None = None,
    nonce: str | None = None,
    key: SigningKey | None = None,
):
    auth = protocol.sign_request(
        key or node.key,
        node=node.name,
        method="POST",
        path=path,
        body=body,
        timestamp=timestamp,
        nonce=nonce,
    )
    return client.post(path, data=body, content_type="application/json", HTTP_AUTHORIZATION=auth)


def stored_message(
    owner: User, peer: str, *, direction: str, text: str = "hello", created_ms: int = 1, **kw: Any
):
    """A message as this node keeps it after delivery (status delivered unless given)."""
    from messaging.models import Message

    sender, recipient = (owner.username, peer) if direction == "out" else (peer, owner.username)
    fields: dict[str, Any] = dict(
        envelope_id=protocol.new_envelope_id(),
        kind="message",
        owner=owner,
        peer_username=peer,
        sender_username=sender,
        recipient_username=recipient,
        direction=direction,
        text=text,
        created_ms=created_ms,
        status="delivered",
    )
    fields.update(kw)
    return Message.objects.create(**fields)


def alice_of_hq() -> Client:
    """alice of this node "hq", logged in (client.user is her), with rita of the remote
    node "branch" and bob of hq to talk to, and a fresh directory: the pages' cast."""
    from django.utils import timezone

    from peers.models import DirectorySync
    from tests.helpers.accounts import logged_in
    from tests.helpers.factories import make_person

    join_local_node("hq")
    user, secret = make_person("alice")
    make_remote_person(make_remote_node("branch"), "rita")
    make_local_person("bob")
    DirectorySync.objects.update_or_create(pk=1, defaults={"last_success_at": timezone.now()})
    client = logged_in(Client(), "alice", secret)
    client.user = user
    return client


def with_file(message, name: str, kind: str = "pdf", mime: str = "application/pdf"):
    """message, now with a file of that name that this node holds (as a page shows it)."""
    from messaging.models import Attachment

    Attachment.objects.create(
        message=message,
        file_id=uuid.uuid4(),
        node="branch",
        name=name,
        mime=mime,
        kind=kind,
        size=1234,
        sha256="0" * 64,
        key=b"k" * 72,
        state=Attachment.State.STORED,
    )
    return message


@dataclass
class InboxNetwork:
    """This node "hq" with bob (and more local people); node "branch" with rita; node
    "other" with olga: the cast of the inbox tests."""

    node_key: SigningKey
    bob: User
    branch: RemoteNode
    other: RemoteNode
    rita: RemotePerson
    olga: RemotePerson


def make_inbox_network(*local_people: str) -> InboxNetwork:
    """The inbox tests' network; local_people adds more people to this node (as attributes)."""
    node_key = join_local_node("hq")
    bob = make_local_person("bob")
    branch, other = make_remote_node("branch"), make_remote_node("other")
    net = InboxNetwork(
        node_key=node_key,
        bob=bob,
        branch=branch,
        other=other,
        rita=make_remote_person(branch, "rita"),
        olga=make_remote_person(other, "olga"),
    )
    for username in local_people:
        setattr(net, username, make_local_person(username))
    return net


def rotate_remote_box_key(person: RemotePerson) -> None:
    """The recipient's node gave them a new encryption key and our directory learned it."""
    person.box = PrivateKey.generate()
    DirectoryUser.objects.filter(username=person.username).update(
        box_key=bytes(person.box.public_key)
    )


def opened_by(person: RemotePerson, row, sender: User) -> dict:
    """The payload of an outbox row as `person` decrypts it."""
    envelope = protocol.parse_envelope(bytes(row.raw))
    return protocol.open_envelope(
        envelope, recipient_box_key=person.box, sender_box_key=bytes(sender.keys.box_public)
    )


def refusal(row, code: str) -> dict:
    """A receiver's per-envelope refusal of an outbox row, as the inbox answers it."""
    return {"index": 0, "id": str(row.envelope_id), "code": code, "message": "refused"}
