"""Reads of the local directory cache: who is who, which nodes may call, key changes."""

from __future__ import annotations

import time

from django.db.models import OuterRef, Subquery

from . import protocol
from .auth import KnownNode
from .models import DirectoryUser, KeyChangeAck, PeerNode


class UnknownUser(Exception):
    """No listed user of an active node has this name."""

    code = "unknown_user"

    def __init__(self, username: str):
        super().__init__(f"no user named {username!r} in the directory")
        self.username = username


class RecordExpired(protocol.ProtocolError):
    """The login server's record of this person is past its expiry: their keys and node
    are no longer vouched for, so nothing is sent to them or accepted from them."""

    code = "record_expired"

    def __init__(self, username: str):
        super().__init__(self.code, f"the user record of {username!r} has expired")
        self.username = username


def record_expires(record: bytes) -> int | None:
    """The expiry (Unix seconds) a stored user record carries; None when it has none."""
    try:
        expires = protocol.parse_json_object(record, what="user record").get("expires")
    except protocol.ProtocolError:
        return None
    return expires if isinstance(expires, int) and not isinstance(expires, bool) else None


def record_is_current(record: bytes, *, now: float | None = None) -> bool:
    """Whether a stored user record is still within its lifetime; check it on every use.

    It was verified (expiry included) when the directory was applied, but a node whose
    records the login server no longer re-signs keeps its last copy in the cache. A
    record without a readable expiry is not current.
    """
    expires = record_expires(record)
    return expires is not None and expires >= (time.time() if now is None else now)


def lookup(username: str) -> DirectoryUser:
    """The verified directory entry of a listed user of an active node (node preloaded)."""
    user = (
        DirectoryUser.objects.select_related("node")
        .filter(username=username, listed=True, node__active=True)
        .first()
    )
    if user is None:
        raise UnknownUser(username)
    return user


def resolve_peer_node(name: str) -> KnownNode:
    """Resolver for the peer API (peers.auth.signed_endpoint): active nodes only."""
    node = PeerNode.objects.filter(name=name).first()
    if node is None:
        raise protocol.ProtocolError("unknown_node", "this node is not in the directory", 403)
    if not node.active:
        raise protocol.ProtocolError("node_revoked", "this node was revoked", 403)
    return KnownNode(name=node.name, verify_key=bytes(node.sign_key), obj=node)


def key_change_pending(viewer, username: str) -> bool:
    """True while username's keys changed after the viewer last confirmed them."""
    acknowledged = KeyChangeAck.objects.filter(viewer=viewer, user=OuterRef("pk")).values(
        "acknowledged_at"
    )
    row = (
        DirectoryUser.objects.filter(username=username)
        .annotate(acknowledged_at=Subquery(acknowledged[:1]))
        .values("keys_changed_at", "acknowledged_at")
        .first()
    )
    if row is None or row["keys_changed_at"] is None:
        return False
    return row["acknowledged_at"] is None or row["acknowledged_at"] < row["keys_changed_at"]
