"""The two administrator roles: a permission group each, made by accounts/migrations/0003.

An office administrator runs an office node's people and watches its deliveries, never
seeing message content; a login server administrator enrols and revokes nodes. Superusers
keep every permission and are not a role.
"""

from __future__ import annotations

import logging

from django.contrib.auth.models import Group
from django.db import transaction

from .models import User

logger = logging.getLogger(__name__)

OFFICE_ADMINISTRATORS = "Office administrators"
LOGIN_SERVER_ADMINISTRATORS = "Login server administrators"
ROLES = (OFFICE_ADMINISTRATORS, LOGIN_SERVER_ADMINISTRATORS)


def make_administrator(*, user: User, role: str) -> None:
    """Let user into the admin site with the permissions of role (one of ROLES)."""
    if role not in ROLES:
        raise ValueError(f"unknown administrator role {role!r}")
    with transaction.atomic():
        group = Group.objects.get(name=role)  # made by a migration: missing means not migrated
        user.is_staff = True
        user.save(update_fields=["is_staff"])
        user.groups.add(group)
    logger.info("administrator made", extra={"user_id": user.pk, "role": role})
