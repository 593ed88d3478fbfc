"""A person's keys: created with the account, private parts only ever decrypted in memory."""

from __future__ import annotations

from functools import lru_cache

from nacl.public import PrivateKey
from nacl.signing import SigningKey

from .crypto import decrypt_at_rest, encrypt_at_rest
from .models import User, UserKeys

# Decrypted private keys are kept in this process's memory only, keyed by the encrypted
# blob (a rotated key is a new blob, so a stale entry is never used): sending and
# receiving then skip an at-rest decryption per message. Nothing is written anywhere.
DECRYPTED_KEY_CACHE_SIZE = 256


def create_keys(user: User) -> UserKeys:
    signing = SigningKey.generate()
    box = PrivateKey.generate()
    return UserKeys.objects.create(
        user=user,
        sign_public=bytes(signing.verify_key),
        box_public=bytes(box.public_key),
        sign_private_encrypted=encrypt_at_rest(bytes(signing)),
        box_private_encrypted=encrypt_at_rest(bytes(box)),
    )


@lru_cache(maxsize=DECRYPTED_KEY_CACHE_SIZE)
def _signing_key(blob: bytes) -> SigningKey:
    return SigningKey(decrypt_at_rest(blob))


@lru_cache(maxsize=DECRYPTED_KEY_CACHE_SIZE)
def _box_key(blob: bytes) -> PrivateKey:
    return PrivateKey(decrypt_at_rest(blob))


def signing_key_for(keys: UserKeys) -> SigningKey:
    return _signing_key(bytes(keys.sign_private_encrypted))


def box_key_for(keys: UserKeys) -> PrivateKey:
    return _box_key(bytes(keys.box_private_encrypted))
