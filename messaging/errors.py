"""Typed refusals of the messaging services, each with a stable code."""

from __future__ import annotations


class MessagingError(Exception):
    """A refusal a person can act on: a stable code, a readable message, an HTTP status."""

    code = "messaging_error"
    status = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class EmptyMessage(MessagingError):
    code = "empty_message"


class MessageTooLong(MessagingError):
    code = "message_too_long"


class InvalidText(MessagingError):
    code = "invalid_text"


class UnknownRecipient(MessagingError):
    code = "unknown_recipient"
    status = 404


class RecipientRecordExpired(MessagingError):
    """The login server's record of the recipient has expired: their keys are no longer
    vouched for (their office has not reported for a long time)."""

    code = "record_expired"
    status = 409


class CannotMessageSelf(MessagingError):
    code = "cannot_message_self"


class NotRetryable(MessagingError):
    code = "not_retryable"
    status = 409


class FileRefused(MessagingError):
    """An attachment that cannot be sent: its type, size or content."""

    code = "file_refused"


class FileTooLarge(FileRefused):
    code = "file_too_large"
    status = 413


class FileTypeNotAllowed(FileRefused):
    code = "file_type_not_allowed"
    status = 415


class FileEmpty(FileRefused):
    code = "file_empty"


class FileDamaged(FileRefused):
    code = "file_damaged"
