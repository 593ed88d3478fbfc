"""Encryption at rest under the node's master key (kept outside the database).

The key is a 32-byte NaCl SecretBox key: P2P_MASTER_KEY (base64) when set, otherwise
the file P2P_MASTER_KEY_FILE, created with mode 0600 on first use.
"""

from __future__ import annotations

import base64
import os
from functools import cache
from pathlib import Path

import nacl.secret
import nacl.utils
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


def _load_or_create_key_file(path: Path) -> bytes:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = nacl.utils.random(nacl.secret.SecretBox.KEY_SIZE)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process of this node created it first
            pass
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(base64.b64encode(key))
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ImproperlyConfigured(f"{path} must not be readable by others (chmod 600)")
    return base64.b64decode(path.read_bytes().strip())


@cache
def _box() -> nacl.secret.SecretBox:
    if settings.MASTER_KEY_B64:
        key = base64.b64decode(settings.MASTER_KEY_B64)
    else:
        key = _load_or_create_key_file(Path(settings.MASTER_KEY_FILE))
    if len(key) != nacl.secret.SecretBox.KEY_SIZE:
        raise ImproperlyConfigured("the master key must be 32 bytes (base64)")
    return nacl.secret.SecretBox(key)


def encrypt_at_rest(plaintext: bytes) -> bytes:
    return bytes(_box().encrypt(plaintext))


def decrypt_at_rest(blob: bytes) -> bytes:
    return _box().decrypt(bytes(blob))
