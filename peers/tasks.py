"""Celery tasks of the peer layer: thin wrappers that log refusals instead of crashing."""

import logging

from celery import shared_task

from . import services
from .identity import is_joined

logger = logging.getLogger(__name__)


@shared_task(name="peers.tasks.report_presence", acks_late=False, ignore_result=True)
def report_presence(exclude_session_hash: str | None = None) -> None:
    """Send this node's users and presence to the login server."""
    if not is_joined():
        return
    try:
        services.report_presence(exclude_session_hash=exclude_session_hash)
    except services.LoginServerError as error:
        logger.warning("presence report failed: %s", error.code, extra={"code": error.code})


@shared_task(name="peers.tasks.fetch_directory", acks_late=False, ignore_result=True)
def fetch_directory() -> None:
    """Refresh the directory cache from the login server (ETag: unchanged costs a 304)."""
    if not is_joined():
        return
    try:
        services.fetch_directory()
    except (services.LoginServerError, services.protocol.ProtocolError) as error:
        logger.warning("directory fetch failed: %s", error.code, extra={"code": error.code})
