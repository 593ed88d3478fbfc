"""Attachment blobs: files encrypted in chunks with libsodium secretstream (XChaCha20-Poly1305).

Layout: a 24-byte secretstream header, then one ciphertext per CHUNK_SIZE bytes of plaintext
(each chunk plus ABYTES). Every chunk is tagged MESSAGE except the last, tagged FINAL; an
empty file is one empty FINAL chunk. The layout is fixed, so the ciphertext size follows from
the plaintext size and a cut, padded or reordered file fails authentication.

Pure: no Django. Files are streamed; at most one chunk is held in memory.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from nacl.bindings import (
    crypto_secretstream_xchacha20poly1305_ABYTES,
    crypto_secretstream_xchacha20poly1305_HEADERBYTES,
    crypto_secretstream_xchacha20poly1305_init_pull,
    crypto_secretstream_xchacha20poly1305_init_push,
    crypto_secretstream_xchacha20poly1305_KEYBYTES,
    crypto_secretstream_xchacha20poly1305_pull,
    crypto_secretstream_xchacha20poly1305_push,
    crypto_secretstream_xchacha20poly1305_state,
    crypto_secretstream_xchacha20poly1305_TAG_FINAL,
    crypto_secretstream_xchacha20poly1305_TAG_MESSAGE,
    randombytes,
)
from nacl.exceptions import CryptoError

CHUNK_SIZE = 64 * 1024
HEADER_SIZE = crypto_secretstream_xchacha20poly1305_HEADERBYTES
ABYTES = crypto_secretstream_xchacha20poly1305_ABYTES
KEY_SIZE = crypto_secretstream_xchacha20poly1305_KEYBYTES
TAG_MESSAGE = crypto_secretstream_xchacha20poly1305_TAG_MESSAGE
TAG_FINAL = crypto_secretstream_xchacha20poly1305_TAG_FINAL
_SEALED_CHUNK_SIZE = CHUNK_SIZE + ABYTES


class BlobCorrupt(Exception):
    """The blob cannot be trusted; `reason` says why in one word (never includes key material)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class BlobInfo:
    """What the envelope needs to let the recipient fetch and verify the blob."""

    key: bytes = field(repr=False)  # kept out of repr so a logged BlobInfo leaks no key
    size: int
    sha256: str
    ciphertext_size: int


def new_file_key() -> bytes:
    """A fresh random key; each file gets its own so one leaked key opens one file."""
    return randombytes(KEY_SIZE)


def ciphertext_size(plain_size: int) -> int:
    """Exact size on disk of a blob holding `plain_size` bytes (checked before decrypting)."""
    if plain_size < 0:
        raise ValueError("plain_size must not be negative")
    chunks = max(1, -(-plain_size // CHUNK_SIZE))
    return HEADER_SIZE + plain_size + chunks * ABYTES


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) != KEY_SIZE:
        raise ValueError(f"a blob key is {KEY_SIZE} bytes")


class BlobWriter:
    """Encrypts a stream into a private temp file in `directory`; `finish` renames it into place.

    Full chunks are encrypted as soon as more data arrives after them (the last chunk must be
    tagged FINAL, so a full chunk waits until we know it is not the last). Use as a context
    manager: leaving the block without `finish` (or with an exception) removes the temp file.
    """

    def __init__(self, directory: Path, key: bytes | None = None) -> None:
        self.key = new_file_key() if key is None else key
        _check_key(self.key)
        directory = Path(directory)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # mkstemp creates the file 0600 and opens it O_EXCL, so nobody else can read or swap it
        fd, name = tempfile.mkstemp(dir=directory, prefix=".blob-", suffix=".part")
        self._temp_path = Path(name)
        self._file = os.fdopen(fd, "wb")
        self._state = crypto_secretstream_xchacha20poly1305_state()
        self._buffer = bytearray()
        self._hash = hashlib.sha256()
        self._size = 0
        self._finished = False
        try:
            header = crypto_secretstream_xchacha20poly1305_init_push(self._state, self.key)
            self._file.write(header)
        except BaseException:
            self.abort()
            raise
        self._written = len(header)

    @property
    def size(self) -> int:
        """Plaintext bytes accepted so far."""
        return self._size

    @property
    def buffered(self) -> int:
        """Plaintext bytes held in memory, waiting to be encrypted (never more than CHUNK_SIZE)."""
        return len(self._buffer)

    def write(self, data: bytes) -> None:
        """Accept a piece of plaintext of any size."""
        if self._file.closed:
            raise ValueError("the blob writer is closed")
        view = memoryview(data).cast("B")
        self._hash.update(view)
        self._size += len(view)
        while view:
            if len(self._buffer) == CHUNK_SIZE:
                self._push(TAG_MESSAGE)
            room = CHUNK_SIZE - len(self._buffer)
            self._buffer += view[:room]
            view = view[room:]

    def _push(self, tag: int) -> None:
        sealed = crypto_secretstream_xchacha20poly1305_push(
            self._state, bytes(self._buffer), tag=tag
        )
        self._file.write(sealed)
        self._written += len(sealed)
        self._buffer.clear()

    def finish(self, final_path: Path) -> BlobInfo:
        """Seal the last chunk, make it durable and rename it to `final_path` (same filesystem)."""
        if self._file.closed:
            raise ValueError("the blob writer is closed")
        final_path = Path(final_path)
        try:
            self._push(TAG_FINAL)
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._temp_path, final_path)
        except BaseException:
            self.abort()
            raise
        self._finished = True
        _fsync_directory(final_path.parent)
        return BlobInfo(
            key=self.key,
            size=self._size,
            sha256=self._hash.hexdigest(),
            ciphertext_size=self._written,
        )

    def abort(self) -> None:
        """Close and delete the temp file. Safe to call twice and after `finish`."""
        self._buffer.clear()
        if not self._file.closed:
            self._file.close()
        if not self._finished:
            self._temp_path.unlink(missing_ok=True)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self._finished:
            self.abort()


def _fsync_directory(directory: Path) -> None:
    # the rename is only durable once the directory entry is on disk
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def iter_plaintext(
    path: Path,
    key: bytes,
    *,
    start: int = 0,
    end: int | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> Iterator[bytes]:
    """Decrypt the blob at `path` and yield its plaintext bytes in [start, end), in pieces of at
    most `chunk_size` bytes.

    Raises BlobCorrupt as soon as a chunk fails authentication, the FINAL chunk is missing, or
    bytes follow it ("trailing_bytes" after a full final chunk; after a short one they are read
    with it and fail as "tampered"). Chunks are chained, so a range still decrypts everything
    before `start`; reading stops at `end`, so bytes after `end` are NOT checked. Use `verify`
    for a whole file.
    """
    _check_key(key)
    if start < 0 or (end is not None and end < 0):
        raise ValueError("start and end must not be negative")
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    if end is not None and end <= start:
        return
    with open(path, "rb") as file:
        header = file.read(HEADER_SIZE)
        if len(header) != HEADER_SIZE:
            raise BlobCorrupt("bad_header")
        state = crypto_secretstream_xchacha20poly1305_state()
        crypto_secretstream_xchacha20poly1305_init_pull(state, header, key)
        position = 0  # plaintext offset of the chunk about to be read
        while True:
            sealed = file.read(_SEALED_CHUNK_SIZE)
            if len(sealed) < ABYTES:
                raise BlobCorrupt("truncated")
            try:
                plain, tag = crypto_secretstream_xchacha20poly1305_pull(state, sealed)
            except CryptoError:
                # a wrong key, a flipped bit and a chunk cut short all look the same here
                raise BlobCorrupt("tampered") from None
            if tag not in (TAG_MESSAGE, TAG_FINAL):
                raise BlobCorrupt("tampered")
            chunk_end = position + len(plain)
            if chunk_end > start:
                piece = plain[max(0, start - position) : None if end is None else end - position]
                for offset in range(0, len(piece), chunk_size):
                    yield piece[offset : offset + chunk_size]
            position = chunk_end
            if end is not None and position >= end:
                return
            if tag == TAG_FINAL:
                if file.read(1):
                    raise BlobCorrupt("trailing_bytes")
                return


def verify(path: Path, key: bytes, *, size: int, sha256: str) -> None:
    """Check the whole blob: exact length, every chunk authentic, FINAL last, plaintext hash.

    Returns None when the blob is exactly what the envelope promised; raises BlobCorrupt otherwise.
    """
    if os.stat(path).st_size != ciphertext_size(size):
        raise BlobCorrupt("length")
    digest = hashlib.sha256()
    for piece in iter_plaintext(path, key):
        digest.update(piece)
    if digest.hexdigest() != sha256.lower():
        raise BlobCorrupt("hash")


def iter_file(
    path: Path, *, start: int = 0, end: int | None = None, chunk: int = CHUNK_SIZE
) -> Iterator[bytes]:
    """Yield the raw bytes of `path` in [start, end): serves ciphertext ranges to peers."""
    if start < 0 or (end is not None and end < 0):
        raise ValueError("start and end must not be negative")
    if chunk < 1:
        raise ValueError("chunk must be positive")
    with open(path, "rb") as file:
        file.seek(start)
        remaining = None if end is None else max(0, end - start)
        while remaining is None or remaining > 0:
            data = file.read(chunk if remaining is None else min(chunk, remaining))
            if not data:
                return
            if remaining is not None:
                remaining -= len(data)
            yield data
