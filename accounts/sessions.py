"""Which browser sessions belong to whom, so that logout and password change can end the others."""

from __future__ import annotations

import logging
from importlib import import_module

from django.conf import settings
from django.db import transaction

from .models import User, UserSession

logger = logging.getLogger(__name__)


def _session_store():
    return import_module(settings.SESSION_ENGINE).SessionStore


def remember_session(*, user: User, session_key: str | None) -> None:
    """Record that `session_key` is a session of `user`."""
    if not session_key:
        return
    UserSession.objects.update_or_create(session_key=session_key, defaults={"user": user})


def forget_session(*, session_key: str | None) -> None:
    if session_key:
        UserSession.objects.filter(session_key=session_key).delete()


def end_sessions(*, user: User, keep_session_key: str | None = None) -> int:
    """End every session of `user` except `keep_session_key`; returns how many were ended."""
    store = _session_store()
    with transaction.atomic():
        rows = list(
            UserSession.objects.select_for_update()
            .filter(user=user)
            .exclude(session_key=keep_session_key or "")
        )
        for row in rows:
            store(session_key=row.session_key).delete()
        UserSession.objects.filter(pk__in=[r.pk for r in rows]).delete()
    if rows:
        logger.info("sessions ended", extra={"user_id": user.pk, "count": len(rows)})
    return len(rows)
