"""A person's keys: created with the account, private parts only ever decrypted in memory."""

from __future__ import annotations

from nacl.public import PrivateKey
from nacl.signing import SigningKey

from .crypto import decrypt_at_rest, encrypt_at_rest
from .models import User, UserKeys


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


def signing_key_for(keys: UserKeys) -> SigningKey:
    return SigningKey(decrypt_at_rest(keys.sign_private_encrypted))


def box_key_for(keys: UserKeys) -> PrivateKey:
    return PrivateKey(decrypt_at_rest(keys.box_private_encrypted))
