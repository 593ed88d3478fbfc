"""Local presence: each person's status from live sessions and recent activity."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.contrib.sessions.models import Session
from django.utils import timezone

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


def users_with_live_sessions(*, now: datetime, exclude_session_hash: str | None = None) -> set[int]:
    live = Session.objects.filter(expire_date__gt=now).values("session_key")
    pairs = UserSession.objects.filter(session_key__in=live).values_list("user_id", "session_key")
    return {
        user_id
        for user_id, key in pairs
        if exclude_session_hash is None or session_hash(key) != exclude_session_hash
    }


def local_presence(
    users: list[User], *, now: datetime | None = None, exclude_session_hash: str | None = None
) -> dict[int, LocalPresence]:
    """The presence of each given user; exclude_session_hash ignores a session being ended."""
    now = now or timezone.now()
    live = users_with_live_sessions(now=now, exclude_session_hash=exclude_session_hash)
    result: dict[int, LocalPresence] = {}
    for user in users:
        moments = [m for m in (user.last_activity, user.last_login) if m is not None]
        last_active = max(moments) if moments else None
        result[user.pk] = LocalPresence(
            status=status_for(has_session=user.pk in live, last_active=last_active, now=now),
            last_seen=int(last_active.timestamp()) if last_active else None,
        )
    return result
