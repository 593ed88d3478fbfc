"""What a message may contain, and the checks of a received payload's fields."""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from peers import protocol

from . import errors
from .filetypes import FileType, clean_filename, type_for_mime

PREVIEW_MAX_BYTES = 16 * 1024
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

READ_RECEIPT_MAX_IDS = 400  # keeps one receipt envelope well under MAX_ENVELOPE_BYTES


def validate_text(text: object) -> str:
    """The text as typed, byte-exact; refused when empty, too long or not encodable."""
    if not isinstance(text, str):
        raise errors.InvalidText("The message must be text.")
    if not text.strip():
        raise errors.EmptyMessage("Write something before sending.")
    if len(text) > settings.MESSAGE_MAX_CHARS:
        raise errors.MessageTooLong(
            f"A message may be at most {settings.MESSAGE_MAX_CHARS} characters "
            f"(this one has {len(text)})."
        )
    if "\x00" in text:
        raise errors.InvalidText("The message contains a NUL character.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise errors.InvalidText("The message is not valid Unicode text.") from None
    return text


def validate_caption(text: object) -> str:
    """A file's caption: as a message's text, but it may be empty."""
    if isinstance(text, str) and not text.strip():
        return ""
    return validate_text(text)


def allowed_type(mime: str) -> FileType | None:
    """The FileType this node accepts under mime (the allow-list, or a download type)."""
    return type_for_mime(mime, download_types=settings.FILE_DOWNLOAD_TYPES)


@dataclass(frozen=True)
class FileFields:
    """A message's file as its envelope describes it (checked)."""

    file_id: str
    name: str
    file_type: FileType
    size: int
    sha256: str
    key: bytes
    preview: bytes | None

    def as_payload(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "id": self.file_id,
            "name": self.name,
            "mime": self.file_type.mime,
            "size": self.size,
            "sha256": self.sha256,
            "key": base64.b64encode(self.key).decode(),
        }
        if self.preview:
            fields["preview"] = base64.b64encode(self.preview).decode()
        return fields


def _invalid(message: str) -> protocol.ProtocolError:
    return protocol.ProtocolError("invalid_payload", message)


def _b64_field(value: object, name: str, *, max_bytes: int) -> bytes:
    if not isinstance(value, str) or len(value) > (max_bytes + 2) // 3 * 4:
        raise _invalid(f"file.{name} must be base64 of at most {max_bytes} bytes")
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _invalid(f"file.{name} must be base64") from None
    # the length check above lets up to two bytes more through (base64 pads to 3 bytes)
    if len(decoded) > max_bytes:
        raise _invalid(f"file.{name} must be base64 of at most {max_bytes} bytes")
    return decoded


def check_file_payload(value: object) -> FileFields:
    """The file fields of a received message, each checked; the type must be one this
    node accepts and the name is cleaned again (never trusted as sent)."""
    if not isinstance(value, dict):
        raise _invalid("file must be an object")
    file_id = value.get("id")
    try:
        if not isinstance(file_id, str) or str(uuid.UUID(file_id)) != file_id:
            raise ValueError
    except ValueError:
        raise _invalid("file.id must be a UUID") from None
    mime = value.get("mime")
    file_type = allowed_type(mime) if isinstance(mime, str) else None
    if file_type is None:
        raise _invalid("file.mime is not a type this node accepts")
    size = value.get("size")
    if isinstance(size, bool) or not isinstance(size, int):
        size = -1
    if not 0 < size <= settings.FILE_MAX_BYTES:
        raise _invalid(f"file.size must be 1-{settings.FILE_MAX_BYTES}")
    sha256 = value.get("sha256")
    if not isinstance(sha256, str) or not _SHA256_HEX.fullmatch(sha256):
        raise _invalid("file.sha256 must be 64 lowercase hex digits")
    key = _b64_field(value.get("key"), "key", max_bytes=32)
    if len(key) != 32:
        raise _invalid("file.key must be 32 bytes")
    preview = None
    if value.get("preview") is not None:
        preview = _b64_field(value["preview"], "preview", max_bytes=PREVIEW_MAX_BYTES)
    name = value.get("name")
    if not isinstance(name, str) or len(name) > 1000:
        raise _invalid("file.name must be text")
    return FileFields(
        file_id=file_id,
        name=clean_filename(name, file_type),
        file_type=file_type,
        size=size,
        sha256=sha256,
        key=key,
        preview=preview or None,
    )


def check_message_payload(payload: dict[str, Any]) -> tuple[str, FileFields | None]:
    """A received message's text and file: the text may be empty only beside a file."""
    fields = check_file_payload(payload["file"]) if "file" in payload else None
    try:
        text = payload.get("text")
        text = validate_caption(text) if fields else validate_text(text)
    except errors.MessagingError as error:
        raise protocol.ProtocolError("invalid_payload", error.message) from None
    return text, fields


def check_fetched_payload(payload: dict[str, Any]) -> tuple[str, str]:
    """A "fetched" receipt: the message's id and "stored", or the code of the refusal."""
    envelope_id, outcome = payload.get("id"), payload.get("outcome")
    try:
        if not isinstance(envelope_id, str) or str(uuid.UUID(envelope_id)) != envelope_id:
            raise ValueError
    except ValueError:
        raise _invalid("id must be a UUID") from None
    if not isinstance(outcome, str) or not re.fullmatch(r"[a-z_]{1,40}", outcome):
        raise _invalid("outcome must be stored or a refusal code")
    return envelope_id, outcome


def check_read_payload(payload: dict[str, Any]) -> list[str]:
    ids = payload.get("ids")
    if not isinstance(ids, list) or not 0 < len(ids) <= 1000:
        raise protocol.ProtocolError("invalid_payload", "ids must be a list of 1-1000 ids")
    checked = []
    for value in ids:
        try:
            if not isinstance(value, str) or str(uuid.UUID(value)) != value:
                raise ValueError
        except ValueError:
            raise protocol.ProtocolError("invalid_payload", "each id must be a UUID") from None
        checked.append(value)
    return checked
