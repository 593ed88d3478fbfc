"""Local presence: each person's status from verified live sessions and recent activity."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.contrib.auth import SESSION_KEY
from django.contrib.sessions.models import Session
from django.utils import timezone
from django_otp import DEVICE_ID_SESSION_KEY

from accounts.models import User, UserSession


@dataclass(frozen=True)
class LocalPresence:
    status: str  # online / away / offline
    last_seen: int | None  # unix seconds of the last activity


def session_hash(session_key: str) -> str:
    """Sessions are named by hash wherever they leave the request (task arguments, logs)."""
    return hashlib.sha256(session_key.encode()).hexdigest()


def status_for(*, has_session: bool, last_active: datetime | None, now: datetime) -> str:
    """Online while active within USER_ONLINE_WINDOW_S, away until USER_AWAY_AFTER_S."""
    if not has_session or last_active is None:
        return "offline"
    idle_s = (now - last_active).total_seconds()
    if idle_s <= settings.USER_ONLINE_WINDOW_S:
        return "online"
    if idle_s <= settings.USER_AWAY_AFTER_S:
        return "away"
    return "offline"


def users_with_verified_sessions(
    *, now: datetime, exclude_session_hash: str | None = None
) -> set[int]:
    """People with an unexpired session that passed the second factor.

    A session is recorded (UserSession) at the password step, so that ending sessions finds
    it too; only the second factor's mark in its stored data makes it count here.
    """
    live = [
        session
        for session in Session.objects.filter(
            expire_date__gt=now, session_key__in=UserSession.objects.values("session_key")
        )
        if exclude_session_hash is None or session_hash(session.session_key) != exclude_session_hash
    ]
    owners = dict(
        UserSession.objects.filter(session_key__in=[s.session_key for s in live]).values_list(
            "session_key", "user_id"
        )
    )
    verified: set[int] = set()
    for session in live:
        data = session.get_decoded()  # {} for data that does not verify
        user_id = owners.get(session.session_key)
        if DEVICE_ID_SESSION_KEY in data and str(data.get(SESSION_KEY)) == str(user_id):
            verified.add(user_id)
    return verified


def local_presence(
    users: list[User], *, now: datetime | None = None, exclude_session_hash: str | None = None
) -> dict[int, LocalPresence]:
    """The presence of each given user; exclude_session_hash ignores a session being ended."""
    now = now or timezone.now()
    live = users_with_verified_sessions(now=now, exclude_session_hash=exclude_session_hash)
    result: dict[int, LocalPresence] = {}
    for user in users:
        # Not last_login: it is set at the password step, before the second factor.
        last_active = user.last_activity
        result[user.pk] = LocalPresence(
            status=status_for(has_session=user.pk in live, last_active=last_active, now=now),
            last_seen=int(last_active.timestamp()) if last_active else None,
        )
    return result
