"""Which browser sessions belong to whom, so that logout and password change can end the others;
and how long a session lives before and after its second factor."""

from __future__ import annotations

import logging
from datetime import timedelta
from importlib import import_module

from django.conf import settings
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone

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


def limit_unverified_session(*, request: HttpRequest) -> None:
    """Only the password is accepted: the session ends UNVERIFIED_SESSION_S from now.

    A fixed end, not an idle timeout, so polling cannot keep a half-logged-in session alive.
    """
    ends = timezone.now() + timedelta(seconds=settings.UNVERIFIED_SESSION_S)
    request.session.set_expiry(ends)


def start_verified_session(*, request: HttpRequest) -> None:
    """Both factors are accepted: the session lives SESSION_IDLE_TIMEOUT_S after each request
    and the person is active from now.

    The session is stored at once: presence counts a session by the second factor's mark in
    its stored data, and the report this login starts may run before the response is sent.
    """
    request.session.set_expiry(None)
    now = timezone.now()
    User.objects.filter(pk=request.user.pk).update(last_activity=now)
    request.user.last_activity = now
    request.session.save()


def clear_expired_sessions() -> int:
    """Delete expired sessions (the session engine's own clear_expired) and the records of
    sessions that no longer exist; presence reads them on every report. Returns how many
    records went."""
    from django.contrib.sessions.models import Session

    _session_store().clear_expired()
    gone, _ = UserSession.objects.exclude(
        session_key__in=Session.objects.values("session_key")
    ).delete()
    if gone:
        logger.info("expired sessions cleared", extra={"count": gone})
    return gone
