"""Periodic housekeeping of browser sessions."""

from celery import shared_task

from . import sessions


@shared_task(name="accounts.tasks.clear_expired_sessions", acks_late=True)
def clear_expired_sessions() -> int:
    return sessions.clear_expired_sessions()
