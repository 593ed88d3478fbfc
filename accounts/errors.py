"""Typed errors of the accounts domain, each with a stable code and a message a person can read."""

from __future__ import annotations


class AccountsError(Exception):
    code = "accounts_error"
    message = "Something went wrong."

    def __init__(self, message: str | None = None, *, code: str | None = None):
        if message is not None:
            self.message = message
        if code is not None:
            self.code = code
        super().__init__(self.message)


class UsernameRejected(AccountsError):
    """A new person's name is one the network protocol refuses."""

    code = "invalid_username"
    message = "This username cannot be used on the network."


class PictureRejected(AccountsError):
    code = "picture_rejected"
    message = "That file is not a picture we accept (JPEG, PNG, GIF or WebP)."


class CodeRejected(AccountsError):
    """A second-factor code was refused; .code says why (wrong_code, reused_code, throttled)."""

    code = "wrong_code"
    message = "That code is not right. Check your authenticator app and try again."


class PasswordRejected(AccountsError):
    """The password typed to confirm a sensitive change was not the person's password."""

    code = "wrong_password"
    message = "That password is not right."
