"""This node's identity: its name, key and the pinned login server key."""

from __future__ import annotations

from functools import lru_cache

from django.dispatch import Signal
from nacl.signing import SigningKey

from accounts.crypto import decrypt_at_rest

from .models import NodeIdentity

# Sent inside the transaction that makes a new node signing key current (key: the new
# SigningKey): what this node signed with the old key and still keeps or has to send is
# signed again (messaging.groups.resign_records).
node_key_rotated = Signal()


class NotJoined(Exception):
    """This node has not joined a network yet (manage.py join_network)."""

    code = "not_joined"


def local_node() -> NodeIdentity:
    identity = NodeIdentity.objects.filter(pk=1).first()
    if identity is None:
        raise NotJoined("this node has not joined a network: run manage.py join_network")
    return identity


def is_joined() -> bool:
    return NodeIdentity.objects.filter(pk=1).exists()


@lru_cache(maxsize=4)
def _decrypt(blob: bytes) -> SigningKey:
    return SigningKey(decrypt_at_rest(blob))


def node_signing_key() -> SigningKey:
    """The node's ed25519 key, decrypted once per process (keyed by the stored ciphertext)."""
    return _decrypt(bytes(local_node().sign_private_encrypted))


def pending_signing_key(identity: NodeIdentity) -> SigningKey | None:
    """The new key of a rotation the login server has not confirmed yet, if there is one."""
    blob = identity.sign_pending_encrypted
    return None if blob is None else _decrypt(bytes(blob))
