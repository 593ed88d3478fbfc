"""Periodic housekeeping of browser sessions."""

from __future__ import annotations

import logging

from celery import shared_task
from django.contrib.sessions.models import Session
from django.utils import timezone

from .models import UserSession

logger = logging.getLogger(__name__)


@shared_task(name="accounts.tasks.clear_expired_sessions", acks_late=True)
def clear_expired_sessions() -> int:
    """Delete sessions past their expiry and the records of sessions that no longer exist
    (expired, or ended by Django): presence reads them on every report. Returns how many
    session records went."""
    Session.objects.filter(expire_date__lte=timezone.now()).delete()
    gone, _ = UserSession.objects.exclude(
        session_key__in=Session.objects.values("session_key")
    ).delete()
    if gone:
        logger.info("expired sessions cleared", extra={"count": gone})
    return gone
