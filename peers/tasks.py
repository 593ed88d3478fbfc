"""Celery tasks of the peer layer: thin wrappers that log refusals instead of crashing."""

import logging

from celery import shared_task
from django.conf import settings

from p2psocial import redis_client

from . import services
from .identity import is_joined

logger = logging.getLogger(__name__)


def _one_at_a_time(name: str):
    """One call to the login server of this kind in flight: while it hangs (up to the
    request deadline), the next periodic ones are skipped instead of tying up every
    worker thread that deliveries need."""
    return redis_client.single_flight(name, ttl_s=settings.PEER_REQUEST_DEADLINE_S + 5)


@shared_task(name="peers.tasks.report_presence", acks_late=False, ignore_result=True)
def report_presence(exclude_session_hash: str | None = None, periodic: bool = False) -> None:
    """Send this node's users and presence to the login server. A periodic report is
    skipped while another is in flight; one asked for by a login or logout always runs."""
    if not is_joined():
        return
    with _one_at_a_time("report-presence") as mine:
        if periodic and not mine:
            return
        try:
            services.report_presence(exclude_session_hash=exclude_session_hash)
        except services.LoginServerError as error:
            logger.warning("presence report failed: %s", error.code, extra={"code": error.code})


@shared_task(name="peers.tasks.fetch_directory", acks_late=False, ignore_result=True)
def fetch_directory() -> None:
    """Refresh the directory cache from the login server (ETag: unchanged costs a 304);
    skipped while another fetch is in flight."""
    if not is_joined():
        return
    with _one_at_a_time("fetch-directory") as mine:
        if not mine:
            return
        try:
            services.fetch_directory()
        except (services.LoginServerError, services.protocol.ProtocolError) as error:
            logger.warning("directory fetch failed: %s", error.code, extra={"code": error.code})


@shared_task(name="peers.tasks.refresh_profile", acks_late=False, ignore_result=True)
def refresh_profile(username: str) -> None:
    """Fetch a person's profile from their office into the cache (a failure is logged and
    keeps the cached copy); skipped while another refresh of the same person runs."""
    if not is_joined():
        return
    ttl_s = settings.PEER_REQUEST_DEADLINE_S + 5
    with redis_client.single_flight(f"refresh-profile:{username}", ttl_s=ttl_s) as mine:
        if mine:
            services.fetch_profile(username=username)
