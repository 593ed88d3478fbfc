"""Files: an upload encrypted as it arrives, the blob store, pulls from the sender's node.

The sender's node encrypts an upload chunk by chunk (secretstream, a fresh key per file)
into FILES_DIR and sends the key, size, type, name, plaintext hash and a preview inside
the message's envelope. The recipient's node pulls the ciphertext with a signed request
(resumed with Range after an interruption), verifies it against the envelope, keeps it
as it came (its key encrypted under this node's master key) and tells the sender with a
"fetched" receipt: only then is the message delivered.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import requests
from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler, StopFutureHandlers
from django.db import transaction
from django.template.defaultfilters import filesizeformat
from django.utils import timezone

from accounts.crypto import decrypt_at_rest, encrypt_at_rest
from accounts.models import User
from peers import protocol
from peers.auth import write_transaction
from peers.models import PeerNode

from . import blobs, errors, live
from .content import PREVIEW_MAX_BYTES, FileFields
from .filetypes import HEAD_BYTES, FileType, clean_filename, detect, make_preview
from .locks import node_lock
from .models import Attachment, Message
from .outbox import (
    backoff_delay_s,
    enqueue,
    local_node_name,
    now_ms,
    outbox_row,
    resolve_recipient,
    schedule_delivery,
    seal,
)

logger = logging.getLogger(__name__)

PULL_TASK = "messaging.tasks.pull_files"
FILE_PATH = "/api/v1/files/"
PULL_BATCH = 20  # files pulled per task run before it hands over to a fresh run
# A run starts no new file after this long: the worker's threads are shared with
# deliveries and presence, so a node with many or slow files hands over to a fresh run.
PULL_RUN_BUDGET_S = 60.0
READ_BYTES = 256 * 1024


# --- where files live ---------------------------------------------------------------------
def blob_path(file_id: str, direction: str) -> Path:
    """A held file: the sender's copy ("out") or the recipient's ("in"); one node may hold
    both, when two of its own people exchange it."""
    return settings.FILES_DIR / "blobs" / file_id[:2] / f"{file_id}.{direction}"


def partial_path(file_id: str) -> Path:
    """Bytes of a pull so far: the next pull resumes after them."""
    return settings.FILES_DIR / "partial" / f"{file_id}.in"


def _incoming_dir() -> Path:
    return settings.FILES_DIR / "incoming"


def attachment_path(attachment: Attachment) -> Path:
    direction = "out" if attachment.message.direction == Message.Direction.OUT else "in"
    return blob_path(str(attachment.file_id), direction)


def _limit_text() -> str:
    return filesizeformat(settings.FILE_MAX_BYTES)  # as the page says it


# --- upload -------------------------------------------------------------------------------
@dataclass
class Upload:
    """A file as it was uploaded: encrypted in place under a fresh key, not sent yet."""

    file_id: str
    name: str
    file_type: FileType
    info: blobs.BlobInfo
    preview: bytes | None = None

    @property
    def path(self) -> Path:
        return blob_path(self.file_id, "out")

    def fields(self, *, with_preview: bool = True) -> FileFields:
        return FileFields(
            file_id=self.file_id,
            name=self.name,
            file_type=self.file_type,
            size=self.info.size,
            sha256=self.info.sha256,
            key=self.info.key,
            preview=self.preview if with_preview else None,
        )

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


class EncryptingUploadHandler(FileUploadHandler):
    """Django upload handler: each chunk of the form's "file" field is encrypted as it
    arrives, its type told from the first bytes; a file over the limit, of a type not
    allowed, or empty stops the upload (errors.FileRefused) and leaves nothing behind.
    Other file fields are refused."""

    chunk_size = blobs.CHUNK_SIZE

    def __init__(self, request=None) -> None:
        super().__init__(request)
        self.uploads: list[Upload] = []
        self._writer: blobs.BlobWriter | None = None
        self._head = bytearray()
        self._type: FileType | None = None
        self._name = ""

    def new_file(self, field_name, file_name, *args: Any, **kwargs: Any) -> None:
        super().new_file(field_name, file_name, *args, **kwargs)
        if field_name != "file":
            raise errors.FileRefused("Attach files with the file field only.")
        if self.uploads:
            raise errors.FileRefused("Send one file per upload.")
        self._writer = blobs.BlobWriter(_incoming_dir())
        self._head, self._type, self._name = bytearray(), None, file_name or ""
        raise StopFutureHandlers()

    def _detect(self) -> None:
        self._type = detect(bytes(self._head), download_types=settings.FILE_DOWNLOAD_TYPES)
        if self._type is None:
            raise errors.FileTypeNotAllowed(
                "This kind of file cannot be sent. Images (PNG, JPEG, GIF, WebP), audio (MP3, "
                "Ogg, WAV, M4A), video (MP4, WebM) and PDF can."
            )

    def receive_data_chunk(self, raw_data: bytes, start: int) -> None:
        writer = self._writer
        if writer is None:
            return None
        if writer.size + len(raw_data) > settings.FILE_MAX_BYTES:
            raise errors.FileTooLarge(f"A file may be at most {_limit_text()}.")
        if self._type is None and len(self._head) < HEAD_BYTES:
            self._head += raw_data[: HEAD_BYTES - len(self._head)]
            if len(self._head) >= HEAD_BYTES:
                self._detect()
        writer.write(raw_data)
        return None

    def file_complete(self, file_size: int) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return None
        try:
            if writer.size == 0:
                raise errors.FileEmpty("The file is empty.")
            if self._type is None:
                self._detect()
            file_id = str(uuid.uuid4())
            final = blob_path(file_id, "out")
            final.parent.mkdir(parents=True, exist_ok=True)
            info = writer.finish(final)
        except BaseException:
            writer.abort()
            raise
        self.uploads.append(
            Upload(file_id, clean_filename(self._name, self._type), self._type, info)
        )
        return None

    def upload_interrupted(self) -> None:
        self.discard()

    def discard(self) -> None:
        """Remove what this upload wrote: the file being written and any finished one."""
        if self._writer is not None:
            self._writer.abort()
            self._writer = None
        for upload in self.uploads:
            upload.discard()
        self.uploads = []


def finish_upload(upload: Upload) -> Upload:
    """Make the preview of an uploaded image; an image that cannot be decoded (damaged,
    cut short, too many pixels) is refused: nobody could see it."""
    if upload.file_type.kind != "image":
        return upload
    try:
        with tempfile.TemporaryFile(dir=_incoming_dir()) as plain:
            for chunk in blobs.iter_plaintext(upload.path, upload.info.key):
                plain.write(chunk)
            plain.seek(0)
            upload.preview = make_preview(plain, upload.file_type, max_bytes=PREVIEW_MAX_BYTES)
    except BaseException:
        upload.discard()  # a full disk, say: the caller no longer holds the upload to remove
        raise
    if upload.preview is None:
        upload.discard()
        raise errors.FileDamaged(
            "This image cannot be shown: it is damaged, incomplete or has too many pixels."
        )
    return upload


def attachment_for(message: Message, fields: FileFields, *, node: str, held: bool) -> Attachment:
    """The Attachment row of message (unsaved): held by this node already (the sender's
    copy) or to be pulled from node."""
    return Attachment(
        message=message,
        file_id=fields.file_id,
        node=node,
        name=fields.name,
        mime=fields.file_type.mime,
        kind=fields.file_type.kind,
        size=fields.size,
        sha256=fields.sha256,
        key=encrypt_at_rest(fields.key),
        preview=fields.preview,
        state=Attachment.State.STORED if held else Attachment.State.PENDING,
        stored_at=timezone.now() if held else None,
    )


def file_fields(attachment: Attachment) -> FileFields:
    """What an envelope says about attachment (to seal its message again)."""
    from .content import allowed_type

    file_type = allowed_type(attachment.mime) or FileType(
        attachment.mime, attachment.kind, "bin", inline=False
    )
    return FileFields(
        file_id=str(attachment.file_id),
        name=attachment.name,
        file_type=file_type,
        size=attachment.size,
        sha256=attachment.sha256,
        key=decrypt_at_rest(bytes(attachment.key)),
        preview=bytes(attachment.preview) if attachment.preview else None,
    )


# --- serving ------------------------------------------------------------------------------
def plaintext(attachment: Attachment, *, start: int = 0, end: int | None = None) -> Iterator[bytes]:
    """The attachment's bytes [start, end), decrypted as they are read."""
    key = decrypt_at_rest(bytes(attachment.key))
    return blobs.iter_plaintext(attachment_path(attachment), key, start=start, end=end)


def ciphertext_size(attachment: Attachment) -> int:
    return blobs.ciphertext_size(attachment.size)


# --- pulling ------------------------------------------------------------------------------
@dataclass
class PullResult:
    node: str
    stored: int = 0
    failed: int = 0
    retry_in_s: float | None = None
    busy: bool = False
    more: bool = False
    errors: list[str] = field(default_factory=list)


class _Refused(Exception):
    """The file cannot be had as announced: the message's file fails for good."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class _Interrupted(Exception):
    """The pull stopped (network, peer busy or down): it resumes later."""


def schedule_pull(node: str) -> None:
    """Start pulling node's files once the current transaction commits."""
    transaction.on_commit(lambda: enqueue(node, task=PULL_TASK, purpose="pull"))


def _pending(node: str):
    now = timezone.now()
    return Attachment.objects.filter(
        node=node, state=Attachment.State.PENDING, message__direction=Message.Direction.IN
    ).exclude(next_attempt_at__gt=now)


def pull_pending(*, node: str) -> PullResult:
    """Pull the due files of messages from node's people, one at a time (bounded); one
    worker at a time per node, as for delivery."""
    result = PullResult(node=node)
    with node_lock(node, "pull") as lock:
        if lock is False:
            result.busy = True
            return result
        started = time.monotonic()
        for attachment in _pending(node).select_related("message").order_by("id")[:PULL_BATCH]:
            if lock is not None and not lock.held:
                result.busy = True
                return result
            if time.monotonic() - started > PULL_RUN_BUDGET_S:
                break
            _pull_and_record(attachment, result)
        result.more = _pending(node).exists()
    return result


def _pull_and_record(attachment: Attachment, result: PullResult) -> None:
    try:
        _pull(attachment)
    except _Interrupted as exc:
        delay = backoff_delay_s(attachment.attempts + 1)
        with write_transaction():
            Attachment.objects.filter(id=attachment.id).update(
                attempts=attachment.attempts + 1,
                next_attempt_at=timezone.now() + timedelta(seconds=delay),
                error=str(exc)[:64],
            )
        result.retry_in_s = min(delay, result.retry_in_s or delay)
        result.errors.append(str(exc))
        logger.warning(
            "file pull interrupted",
            extra={"node": result.node, "file": str(attachment.file_id), "reason": str(exc)},
        )
        return
    except _Refused as refused:
        partial_path(str(attachment.file_id)).unlink(missing_ok=True)
        _settle(attachment, outcome=refused.code)
        result.failed += 1
        logger.warning(
            "file refused",
            extra={"node": result.node, "file": str(attachment.file_id), "code": refused.code},
        )
        return
    _settle(attachment, outcome="stored")
    result.stored += 1


def _pull(attachment: Attachment) -> None:
    """Fetch the whole ciphertext into the partial file, verify it, move it into place."""
    file_id = str(attachment.file_id)
    key = decrypt_at_rest(bytes(attachment.key))
    expected = blobs.ciphertext_size(attachment.size)
    final = blob_path(file_id, "in")
    if attachment.message.group_id is not None and final.exists():
        # Another recipient here of the same group message pulled it already.
        try:
            blobs.verify(final, key, size=attachment.size, sha256=attachment.sha256)
            return
        except blobs.BlobCorrupt:
            pass  # pulled again below
    partial = partial_path(file_id)
    partial.parent.mkdir(parents=True, exist_ok=True)
    if attachment.node == local_node_name():
        _copy_local(attachment, partial)
    else:
        _fetch(attachment, partial, expected)
    try:
        blobs.verify(partial, key, size=attachment.size, sha256=attachment.sha256)
        head = b"".join(blobs.iter_plaintext(partial, key, end=HEAD_BYTES))
    except blobs.BlobCorrupt as corrupt:
        raise _Refused(f"file_{corrupt.reason}") from None
    detected = detect(head, download_types=settings.FILE_DOWNLOAD_TYPES)
    if detected is None or detected.mime != attachment.mime:
        raise _Refused("file_type_mismatch")
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(partial, final)


def _copy_local(attachment: Attachment, partial: Path) -> None:
    """Two people of this node: the sender's copy is here already."""
    source = blob_path(str(attachment.file_id), "out")
    if not source.exists():
        raise _Refused("file_not_found")
    shutil.copyfile(source, partial)


def _fetch(attachment: Attachment, partial: Path, expected: int) -> None:
    from peers import client

    peer = PeerNode.objects.filter(name=attachment.node).first()
    if peer is None or not peer.active:
        raise _Refused("unknown_node")
    have = partial.stat().st_size if partial.exists() else 0
    if have > expected:
        partial.unlink()
        have = 0
    if have == expected:
        return
    headers = {"Range": f"bytes={have}-"} if have else {}
    path = f"{FILE_PATH}{attachment.file_id}"
    try:
        with client.signed_get_stream(
            peer.url,
            path,
            headers,
            timeout=settings.PEER_HTTP_TIMEOUT_S,
            deadline_s=settings.FILE_PULL_DEADLINE_S,
        ) as response:
            if response.status_code == 404:
                raise _Refused("file_not_found")
            if have and response.status_code == 200:
                have = 0  # the peer sends it all again: start over
            elif response.status_code not in (200, 206):
                raise _Interrupted(f"http {response.status_code}")
            elif response.status_code == 206 and not _range_starts_at(response, have, expected):
                raise _Interrupted("unexpected range")
            with open(partial, "r+b" if have else "wb") as out:
                out.seek(have)
                out.truncate()
                for chunk in response.iter_content(READ_BYTES):
                    have += len(chunk)
                    if have > expected:
                        raise _Refused("file_too_long")
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
    except requests.RequestException as exc:
        raise _Interrupted(f"network: {type(exc).__name__}") from None
    if have != expected:
        raise _Interrupted(f"incomplete: {have} of {expected} bytes")


def _range_starts_at(response: requests.Response, start: int, total: int) -> bool:
    value = response.headers.get("Content-Range", "")
    return value == f"bytes {start}-{total - 1}/{total}"


def _settle(attachment: Attachment, *, outcome: str) -> None:
    """Record the pull's outcome and queue the "fetched" receipt to the sender."""
    message = attachment.message
    owner = User.objects.filter(id=message.owner_id).select_related("keys").first()
    row = None
    try:
        # A group message is delivered once its envelope is: nobody waits for this.
        author = resolve_recipient(message.sender_username) if not message.group_id else None
    except (errors.UnknownRecipient, errors.RecipientRecordExpired):
        author = None  # nobody to tell: the sender's message fails by age there
        # (delivery.sweep_outbox fails a message still "sent" past the maximum age)
    if author is not None and owner is not None:
        local_name = local_node_name()
        envelope_id = protocol.new_envelope_id()
        sealed = seal(
            sender=owner,
            sender_node=local_name,
            recipient=author,
            kind="fetched",
            payload={"id": str(message.envelope_id), "outcome": outcome},
            envelope_id=envelope_id,
            created_ms=now_ms(),
        )
        row = outbox_row(sealed, envelope_id=envelope_id, kind="fetched", destination=author.node)
    now = timezone.now()
    with write_transaction():
        # Only a pending file is settled, once: a pull and the sweeper's expiry racing for
        # it must not both tell the sender (one "stored", the other "expired").
        waiting = Attachment.objects.filter(id=attachment.id, state=Attachment.State.PENDING)
        if outcome == "stored":
            settled = waiting.update(
                state=Attachment.State.STORED, stored_at=now, error="", next_attempt_at=None
            )
        else:
            settled = waiting.update(
                state=Attachment.State.FAILED, error=outcome[:64], next_attempt_at=None
            )
        if not settled:
            return
        if row is not None:
            row.save()
        live.announce(
            [message.id], "file", known={message.id: (message.owner_id, message.peer_username)}
        )
    if row is not None:
        schedule_delivery(row.destination)


def sweep_pulls() -> list[str]:
    """Fail pulls older than DELIVERY_MAX_AGE_S and re-enqueue every node with due pulls
    (tasks lost to a Redis flush or a killed worker). Returns those nodes."""
    cutoff = timezone.now() - timedelta(seconds=settings.DELIVERY_MAX_AGE_S)
    expired = Attachment.objects.filter(
        state=Attachment.State.PENDING, message__stored_at__lt=cutoff
    ).select_related("message")
    for node in sorted(set(expired.values_list("node", flat=True))):
        with node_lock(node, "pull") as lock:
            if lock is False:
                continue  # a pull of that node runs: the next sweep expires its files
            for attachment in expired.filter(node=node)[:100]:
                _settle(attachment, outcome="file_expired")
                partial_path(str(attachment.file_id)).unlink(missing_ok=True)
    nodes = sorted(set(_due_nodes()))
    for node in nodes:
        enqueue(node, task=PULL_TASK, purpose="pull", force=True)
    return nodes


def _due_nodes() -> Iterator[str]:
    now = timezone.now()
    yield from (
        Attachment.objects.filter(
            state=Attachment.State.PENDING, message__direction=Message.Direction.IN
        )
        .exclude(next_attempt_at__gt=now)
        .values_list("node", flat=True)
        .distinct()
    )


def pull_again(*, node: str) -> None:
    """Pull node's waiting files at once (it came back online)."""
    if Attachment.objects.filter(node=node, state=Attachment.State.PENDING).exists():
        Attachment.objects.filter(node=node, state=Attachment.State.PENDING).update(
            next_attempt_at=None
        )
        enqueue(node, task=PULL_TASK, purpose="pull", force=True)
