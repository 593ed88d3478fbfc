"""Every write about people: creating accounts, keys and profiles."""

from __future__ import annotations

from django.contrib.auth.password_validation import validate_password
from django.db import transaction

from .keys import create_keys
from .models import Profile, User


def create_person(
    *,
    username: str,
    password: str,
    full_name: str = "",
    position: str = "",
    is_staff: bool = False,
    validate: bool = True,
) -> User:
    """Create an account with its profile and keys, in one transaction."""
    user = User(username=username, is_staff=is_staff)
    if validate:
        validate_password(password, user)
    user.set_password(password)
    with transaction.atomic():
        user.save()
        Profile.objects.create(user=user, full_name=full_name, position=position)
        create_keys(user)
    return user
