"""Arrange people for tests through the real services (no mocks of project code)."""

from __future__ import annotations

import itertools

import pyotp

from accounts import roles, services, twofactor
from accounts.models import User

DEFAULT_PASSWORD = "correct horse battery staple"
_counter = itertools.count(1)


def make_person(
    username: str | None = None,
    *,
    password: str = DEFAULT_PASSWORD,
    totp: bool = True,
    staff: bool = False,
    full_name: str = "",
    position: str = "",
) -> tuple[User, str | None]:
    """Create a person; with totp=True they get a confirmed authenticator.

    staff=True makes an admin (staff and superuser). Returns (user, base32 secret or None).
    """
    username = username or f"person{next(_counter)}"
    user = services.create_person(
        username=username,
        password=password,
        full_name=full_name or username.title(),
        position=position,
        is_staff=staff,
    )
    if staff:
        User.objects.filter(pk=user.pk).update(is_superuser=True)
        user.refresh_from_db()
    secret = None
    if totp:
        secret = pyotp.random_base32()
        twofactor.add_totp_device(user=user, secret_b32=secret)
    return user, secret


def code_at_step(secret: str, step: int) -> str:
    """The 6-digit code of a given 30-second time step, by pyotp (independent of django-otp)."""
    return pyotp.TOTP(secret).at(step * 30)


def make_office_administrator(username: str | None = None) -> tuple[User, str]:
    """A person made an office administrator as `create_person --admin` does (not a
    superuser), with an authenticator. Returns (user, base32 secret)."""
    user, secret = make_person(username)
    roles.make_administrator(user=user, role=roles.OFFICE_ADMINISTRATORS)
    assert secret is not None
    return user, secret
