"""Every write about people: creating accounts, keys, profiles and passwords."""

from __future__ import annotations

import base64
import logging
import secrets
from typing import IO

from django.conf import settings
from django.contrib.auth import update_session_auth_hash
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.http import HttpRequest
from django_otp.plugins.otp_totp.models import TOTPDevice

from . import roles, sessions, twofactor
from .errors import UsernameRejected
from .keys import create_keys
from .models import Profile, User, UserKeys
from .pictures import normalise_picture
from .validators import validate_username

logger = logging.getLogger(__name__)


def create_person(
    *,
    username: str,
    password: str,
    full_name: str = "",
    position: str = "",
    is_staff: bool = False,
    validate: bool = True,
) -> User:
    """Create an account with its profile and keys, in one transaction.

    Raises UsernameRejected for a name the network refuses (whatever `validate` says: such a
    name would stop the whole node's presence report) and, with `validate`, ValidationError
    for a weak password.
    """
    try:
        validate_username(username)
    except ValidationError as exc:
        raise UsernameRejected(" ".join(exc.messages)) from None
    user = User(username=username, is_staff=is_staff)
    if validate:
        validate_password(password, user)
    user.set_password(password)
    with transaction.atomic():
        user.save()
        Profile.objects.create(user=user, full_name=full_name, position=position)
        create_keys(user)
    logger.info("person created", extra={"user_id": user.pk, "staff": is_staff})
    return user


def create_login_server_administrator(
    *, username: str, password: str, full_name: str = "", totp_secret_b32: str | None = None
) -> tuple[User, TOTPDevice]:
    """An administrator of the login server, in one transaction: staff, in the login server
    administrators' group, with a confirmed authenticator of the given base32 secret (a new
    random one without it). No keys: the login server holds no messages.

    Raises UsernameRejected, ValidationError for a weak password, or CodeRejected for a
    secret that is not base32 of at least 80 bits.
    """
    try:
        validate_username(username)
    except ValidationError as exc:
        raise UsernameRejected(" ".join(exc.messages)) from None
    user = User(username=username)
    validate_password(password, user)
    user.set_password(password)
    secret = totp_secret_b32 or base64.b32encode(secrets.token_bytes(20)).decode("ascii")
    with transaction.atomic():
        user.save()
        Profile.objects.create(user=user, full_name=full_name)
        roles.make_administrator(user=user, role=roles.LOGIN_SERVER_ADMINISTRATORS)
        device = twofactor.add_totp_device(user=user, secret_b32=secret)
    logger.info("login server administrator created", extra={"user_id": user.pk})
    return user, device


def complete_person(*, user: User) -> None:
    """Give an account made elsewhere (the admin's add form) its profile and keys."""
    with transaction.atomic():
        Profile.objects.get_or_create(user=user)
        if not UserKeys.objects.filter(user=user).exists():
            create_keys(user)


def update_profile(
    *,
    user: User,
    full_name: str,
    position: str,
    description: str,
    location: str,
    picture: IO[bytes] | None = None,
    remove_picture: bool = False,
) -> Profile:
    """Store the person's profile text exactly as given and, if given, a re-encoded picture.

    Raises accounts.errors.PictureRejected before anything is written.
    """
    new_name = None
    if picture is not None:
        clean = normalise_picture(
            picture,
            max_bytes=settings.PROFILE_PICTURE_MAX_BYTES,
            max_px=settings.PROFILE_PICTURE_MAX_PX,
        )
        new_name = default_storage.save(
            f"pictures/{user.pk}-{secrets.token_hex(8)}.{clean.extension}",
            ContentFile(clean.data),
        )
    try:
        with transaction.atomic():
            profile, _ = Profile.objects.select_for_update().get_or_create(user=user)
            old_name = profile.picture.name if profile.picture else ""
            profile.full_name = full_name
            profile.position = position
            profile.description = description
            profile.location = location
            if new_name is not None:
                profile.picture.name = new_name
            elif remove_picture:
                profile.picture.name = ""
            profile.save()
            if old_name and old_name != profile.picture.name:
                transaction.on_commit(lambda: default_storage.delete(old_name))
    except BaseException:
        if new_name is not None:
            default_storage.delete(new_name)
        raise
    logger.info("profile updated", extra={"user_id": user.pk, "picture": new_name is not None})
    return profile


def change_password(*, request: HttpRequest, user: User, new_password: str) -> None:
    """Set a new (already validated) password, keep this session and end every other one."""
    old_key = request.session.session_key
    with transaction.atomic():
        user.set_password(new_password)
        user.save(update_fields=["password"])
        sessions.end_sessions(user=user, keep_session_key=old_key)
    update_session_auth_hash(request, user)  # rotates this session's key
    sessions.forget_session(session_key=old_key)
    sessions.remember_session(user=user, session_key=request.session.session_key)
    logger.info("password changed", extra={"user_id": user.pk})


def rotate_keys(*, user: User) -> UserKeys:
    """Replace a person's signing and encryption keys; the old private keys are gone.

    The next presence report publishes the new public keys; peers then show a key change.
    """
    with transaction.atomic():
        UserKeys.objects.filter(user=user).delete()
        keys = create_keys(user)
    logger.info("user keys rotated", extra={"user": user.username})
    return keys
