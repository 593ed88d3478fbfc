"""What a message may contain, and the checks of a received payload's fields."""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings

from peers import protocol

from . import errors

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


def check_text_payload(payload: dict[str, Any]) -> str:
    text = payload.get("text")
    try:
        return validate_text(text)
    except errors.MessagingError as error:
        raise protocol.ProtocolError("invalid_payload", error.message) from None


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
