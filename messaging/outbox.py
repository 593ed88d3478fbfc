"""Outbox rows and their scheduling: sealing for a recipient, enqueueing the delivery
task of a destination node, backoff."""

from __future__ import annotations

import contextlib
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import redis
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from accounts.keys import box_key_for, signing_key_for
from accounts.models import User
from p2psocial import redis_client
from peers import directory, protocol

from . import errors, queries
from .models import DestinationState, Message, Outbox

logger = logging.getLogger(__name__)

DELIVER_TASK = "messaging.tasks.deliver_to_node"
# While a delivery task for a node is queued or draining, sends skip enqueueing another
# one (the drain picks their rows up). The flag expires on its own if a worker dies.
SCHEDULED_FLAG_TTL_S = 30


def now_ms() -> int:
    return int(time.time() * 1000)


def local_node_name() -> str:
    from peers.client import local_identity

    return local_identity().name


def node_signing_key():
    from peers.client import local_identity

    return local_identity().signing_key


def scheduled_key(node: str, purpose: str = "deliver") -> str:
    prefix = "scheduled" if purpose == "deliver" else f"scheduled-{purpose}"
    return f"p2p:messaging:{prefix}:{settings.CELERY_TASK_DEFAULT_QUEUE}:{node}"


def enqueue(
    node: str, *, force: bool = False, task: str = DELIVER_TASK, purpose: str = "deliver"
) -> None:
    """Start a task for node (by default its delivery), unless one is already waiting to
    start."""
    from p2psocial.celery import app

    try:
        if not force and not redis_client.get().set(
            scheduled_key(node, purpose), b"1", nx=True, ex=SCHEDULED_FLAG_TTL_S
        ):
            return
        app.send_task(task, args=[node])
    except (redis.RedisError, BrokerError) as exc:
        # The rows are committed: the sweeper enqueues them once Redis is back.
        with contextlib.suppress(redis.RedisError):
            redis_client.get().delete(scheduled_key(node, purpose))
        logger.warning(
            "task not enqueued",
            extra={"node": node, "task": task, "error": type(exc).__name__},
        )


def schedule_delivery(node: str) -> None:
    """Enqueue delivery to node once the current transaction commits."""
    transaction.on_commit(lambda: enqueue(node))


def forget_backoff(nodes) -> None:
    """Let these destination nodes be tried at once (a retry, or the node came back)."""
    DestinationState.objects.filter(node__in=nodes).update(
        consecutive_failures=0, next_attempt_at=None
    )


def backoff_delay_s(failures: int) -> float:
    """Capped exponential backoff with jitter (half to full of the nominal delay)."""
    nominal = settings.DELIVERY_BACKOFF_BASE_S * (2 ** min(max(failures - 1, 0), 30))
    capped = min(settings.DELIVERY_BACKOFF_MAX_S, nominal)
    return capped * random.uniform(0.5, 1.0)


@dataclass(frozen=True)
class Recipient:
    username: str
    node: str
    box_key: bytes


def resolve_recipient(username: str, *, local_name: str | None = None) -> Recipient:
    """Where a person lives and their public box key: this node's users first, then the
    directory cache. Raises UnknownRecipient, or RecipientRecordExpired for a person of
    another node whose user record has expired."""
    local_name = local_name or local_node_name()
    address = queries.recipient_address(username)
    if address is None or address.node == local_name:  # listed but no account here (any more)
        raise errors.UnknownRecipient(f"There is nobody called {username!r}.")
    if address.record is not None and not directory.record_is_current(address.record):
        raise errors.RecipientRecordExpired(
            f"{username}'s entry in the network directory has expired, so nothing can be "
            "sent to them safely for now (their office may be offline). Try again later."
        )
    return Recipient(username, address.node or local_name, address.box_key)


def seal(
    *,
    sender: User,
    sender_node: str,
    recipient: Recipient,
    kind: str,
    payload: dict[str, Any],
    envelope_id: str,
    created_ms: int,
) -> protocol.SignedEnvelope:
    keys = sender.keys
    return protocol.seal_envelope(
        sender_sign_key=signing_key_for(keys),
        sender_box_key=box_key_for(keys),
        recipient_box_key=recipient.box_key,
        envelope_id=envelope_id,
        kind=kind,
        sender=sender.username,
        sender_node=sender_node,
        recipient=recipient.username,
        recipient_node=recipient.node,
        created_ms=created_ms,
        payload=payload,
    )


def outbox_row(
    sealed: protocol.SignedEnvelope,
    *,
    envelope_id: str,
    kind: str,
    destination: str,
    message: Message | None = None,
) -> Outbox:
    now = timezone.now()
    return Outbox(
        envelope_id=envelope_id,
        kind=kind,
        destination=destination,
        raw=sealed.raw,
        signature=sealed.signature,
        message=message,
        queued_at=now,
        next_attempt_at=now,
    )


def envelope_sender(raw: bytes) -> str | None:
    try:
        return protocol.parse_envelope(raw).sender
    except protocol.ProtocolError:
        return None
