"""Delivery: one destination node's queue drained in signed batches under a Redis lock,
acknowledgements verified and applied, and the sweeper that re-enqueues what a lost task
left behind (Synapse's per-destination queue)."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from datetime import timedelta

import redis
import requests
from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from p2psocial import redis_client
from peers import protocol
from peers.auth import KnownNode, write_transaction
from peers.models import PeerNode

from . import files, group_messages, live
from .locks import HeldLock, lock_expires_in_s, node_lock
from .models import Attachment, DestinationState, Message, Outbox
from .outbox import (
    backoff_delay_s,
    enqueue,
    forget_backoff,
    local_node_name,
    node_signing_key,
    schedule_delivery,
    scheduled_key,
)
from .receiving import accept_envelopes
from .sending import reseal, reseal_receipts

logger = logging.getLogger(__name__)

INBOX_PATH = "/api/v1/inbox"
# A receiver may not know a new sender (or a sender's new keys) until its next directory
# fetch: these per-envelope refusals are retried with backoff instead of failing at once.
# Refusals that a directory catching up can cure (the sender's keys, node or record).
RETRYABLE_CODES = frozenset(
    {
        "unknown_sender",
        "sender_not_on_node",
        "bad_envelope_signature",
        "record_expired",
        "group_behind",  # the home node's records reach that node first, then this
    }
)
MAX_BATCHES_PER_RUN = 200
BATCH_BODY_HEADROOM_BYTES = 4096


@dataclass
class DeliveryResult:
    """What one deliver_pending run did; retry_in_s is set while the node is backing off,
    busy_for_s when another worker's lock on the node lasts that long unless extended."""

    node: str
    delivered: int = 0
    failed: int = 0
    batches: int = 0
    retry_in_s: float | None = None
    busy: bool = False
    busy_for_s: float | None = None
    more: bool = False


class _Unreachable(Exception):
    """The whole batch did not get through (network, 5xx, refused batch, bad answer)."""


def _due(node: str):
    """Node's outbox rows that may be sent now."""
    return Outbox.objects.filter(
        destination=node, failed_at__isnull=True, next_attempt_at__lte=timezone.now()
    )


def _due_rows(node: str) -> list[Outbox]:
    rows = list(
        _due(node)
        .order_by("id")
        .only(
            "id",
            "envelope_id",
            "kind",
            "raw",
            "signature",
            "earlier_sealings",
            "read_ids",
            "message_id",
            "attempts",
        )[: settings.DELIVERY_BATCH_MAX_ENVELOPES]
    )
    budget = settings.PEER_MAX_BODY_BYTES - BATCH_BODY_HEADROOM_BYTES
    size = 0
    for count, row in enumerate(rows):
        size += (len(row.raw) + 2) // 3 * 4 + 120  # base64 body, signature and JSON
        if size > budget and count > 0:
            return rows[:count]
    return rows


def _has_due(node: str) -> bool:
    return _due(node).exists()


def _post_batch(node: str, rows: list[Outbox]) -> tuple[bytes, list, list]:
    """Send rows to node; returns (node verify key, acks, errors) or raises _Unreachable."""
    local_name = local_node_name()
    if node == local_name:
        # Same node: the very same receiving service, without the network hop.
        verify_key = bytes(node_signing_key().verify_key)
        items = []
        for index, row in enumerate(rows):
            try:
                envelope = protocol.parse_envelope(bytes(row.raw))
                items.append(protocol.BatchItem(index, envelope, bytes(row.signature)))
            except protocol.ProtocolError as error:
                items.append(protocol.BatchItem(index, None, None, error))
        try:
            answer = accept_envelopes(items, from_node=KnownNode(local_name, verify_key, None))
        except protocol.ProtocolError as error:
            raise _Unreachable(error.code) from None
        return verify_key, answer["acks"], answer["errors"]

    from peers import client

    peer = PeerNode.objects.filter(name=node).first()
    if peer is None:
        raise _Unreachable("unknown_node")
    if not peer.active:
        raise _Unreachable("node_revoked")
    body = protocol.encode_batch(
        [protocol.SignedEnvelope(bytes(r.raw), bytes(r.signature)) for r in rows]
    )
    try:
        response = client.signed_post(
            peer.url,
            INBOX_PATH,
            body,
            timeout=settings.PEER_HTTP_TIMEOUT_S,
            deadline_s=settings.PEER_REQUEST_DEADLINE_S,
            max_answer_bytes=settings.PEER_MAX_BODY_BYTES,
        )
    except client.AnswerTooLarge:
        raise _Unreachable("answer too large") from None
    except client.DeadlineExceeded:
        raise _Unreachable("deadline exceeded") from None
    except requests.RequestException as exc:
        raise _Unreachable(f"network: {type(exc).__name__}") from None
    try:
        answer = response.json()
    except (ValueError, RecursionError):  # a hostile peer's deeply nested JSON included
        answer = None
    if response.status_code != 200:
        code = ""
        if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
            code = str(answer["error"].get("code", ""))[:60]
        raise _Unreachable(f"http {response.status_code} {code}".strip())
    if not isinstance(answer, dict):
        raise _Unreachable("malformed answer")
    acks, refusals = answer.get("acks"), answer.get("errors", [])
    if not isinstance(acks, list) or not isinstance(refusals, list):
        raise _Unreachable("malformed answer")
    return bytes(peer.sign_key), acks, refusals


def _record_failure(node: str, rows: list[Outbox], reason: str) -> float:
    now = timezone.now()
    with write_transaction():
        state, _ = DestinationState.objects.get_or_create(node=node)
        state.consecutive_failures += 1
        delay = backoff_delay_s(state.consecutive_failures)
        state.next_attempt_at = now + timedelta(seconds=delay)
        state.last_error = reason[:200]
        state.save()
        Outbox.objects.filter(id__in=[r.id for r in rows]).update(
            attempts=F("attempts") + 1, last_error=reason[:200]
        )
    logger.warning(
        "delivery failed",
        extra={"node": node, "reason": reason, "retry_in_s": round(delay, 2)},
    )
    return delay


def _acknowledges(verify_key: bytes, ack: dict, row: Outbox) -> bool:
    """Whether ack is the receiver's verified acknowledgement of bytes this node sealed for
    row: the ones just sent, or an earlier sealing of the envelope that it stored before
    (it answers with the digest of what it holds). Either way, what arrived is what was sent."""
    for raw in [bytes(row.raw), *(protocol.b64d(b, field="sealing") for b in row.earlier_sealings)]:
        try:
            protocol.verify_ack(verify_key, ack, envelope_id=str(row.envelope_id), raw=raw)
        except protocol.ProtocolError:
            continue
        return True
    return False


def _apply_answer(
    node: str, rows: list[Outbox], verify_key: bytes, acks: list, refusals: list
) -> tuple[int, int]:
    """Mark acknowledged envelopes delivered, refused ones failed or retried: one transaction."""
    by_id = {str(r.envelope_id): r for r in rows}
    delivered: dict[str, Outbox] = {}
    for ack in acks:
        envelope_id = ack.get("id") if isinstance(ack, dict) else None
        row = by_id.get(envelope_id) if isinstance(envelope_id, str) else None
        if row is None:
            continue
        if not _acknowledges(verify_key, ack, row):
            logger.warning("acknowledgement refused", extra={"node": node, "envelope": envelope_id})
            continue
        delivered[envelope_id] = row
    failed: dict[str, list[Outbox]] = {}
    retried: list[Outbox] = []
    resealed: list[Outbox] = []
    moved: dict[int, str] = {}  # resealed for a person who changed office: row -> node
    for refusal in refusals:
        envelope_id = refusal.get("id") if isinstance(refusal, dict) else None
        row = by_id.get(envelope_id) if isinstance(envelope_id, str) else None
        if row is None or envelope_id in delivered:
            continue
        code = str(refusal.get("code", "refused"))[:60]
        if code in RETRYABLE_CODES:
            retried.append(row)
        elif code == "decrypt_failed" and (row.message_id or row.read_ids):
            # Sealed to a key the recipient no longer has (they rotated it): seal it again
            # for the key in our directory and keep it queued. If our directory is behind,
            # the next refusal reseals again once it has caught up. A read receipt too:
            # dropped, its messages would stay "delivered" for their author for good.
            resealed.append(row)
        else:
            failed.setdefault(code, []).append(row)
        logger.warning(
            "envelope refused", extra={"node": node, "envelope": envelope_id, "code": code}
        )
    answered = set(delivered) | {str(r.envelope_id) for rs in failed.values() for r in rs}
    retried_ids = {str(r.envelope_id) for r in retried + resealed}
    retried += [r for i, r in by_id.items() if i not in answered and i not in retried_ids]
    owners = live.owners(r.message_id for r in rows if r.message_id)  # before the lock
    now = timezone.now()
    with write_transaction():
        if resealed:
            chosen = Outbox.objects.filter(id__in=[r.id for r in resealed])
            again = reseal(chosen, now=now)
            group_messages.reseal([r for r in resealed if r.kind == "group_message"], now=now)
            receipts, dropped = reseal_receipts(chosen, now=now)
            moved = {r.id: r.destination for r in again + receipts if r.destination != node}
            gone = {r.id for r in dropped}
            resealed = [r for r in resealed if r.id not in moved and r.id not in gone]
        if delivered:
            # FAILED too: the sweeper may have expired a row whose batch was in flight;
            # a verified acknowledgement is the truth.
            acknowledged = [
                r.message_id
                for r in delivered.values()
                if r.message_id and r.kind not in group_messages.GROUP_ROW_KINDS
            ]
            group_messages.acknowledged(
                [r for r in delivered.values() if r.kind in group_messages.GROUP_ROW_KINDS], now=now
            )
            # A message with a file is delivered once the recipient's node holds the file
            # (its "fetched" receipt); until then it has only been sent.
            with_file = set(
                Attachment.objects.filter(message_id__in=acknowledged).values_list(
                    "message_id", flat=True
                )
            )
            Message.objects.filter(
                id__in=[i for i in acknowledged if i not in with_file],
                status__in=[Message.Status.QUEUED, Message.Status.FAILED],
            ).update(status=Message.Status.DELIVERED, delivered_at=now, error="")
            Message.objects.filter(
                Q(status=Message.Status.QUEUED) | Q(status=Message.Status.FAILED, error="expired"),
                id__in=with_file,
            ).update(status=Message.Status.SENT, error="")
            Outbox.objects.filter(id__in=[r.id for r in delivered.values()]).delete()
        for code, group in failed.items():
            Message.objects.filter(
                id__in=[r.message_id for r in group if r.message_id],
                status=Message.Status.QUEUED,
                group__isnull=True,
            ).update(status=Message.Status.FAILED, error=code)
            group_messages.refused(
                [r for r in group if r.kind in group_messages.GROUP_ROW_KINDS], code, now=now
            )
            Outbox.objects.filter(id__in=[r.id for r in group if r.message_id]).update(
                failed_at=now, last_error=code
            )
            Outbox.objects.filter(id__in=[r.id for r in group if not r.message_id]).delete()
        for group, error in ((retried, "not acknowledged"), (resealed, "decrypt_failed")):
            for row in group:
                Outbox.objects.filter(id=row.id).update(
                    attempts=row.attempts + 1,
                    next_attempt_at=now + timedelta(seconds=backoff_delay_s(row.attempts + 1)),
                    last_error=error,
                )
        live.announce(
            [r.message_id for r in delivered.values()]
            + [r.message_id for group in failed.values() for r in group],
            "status",
            known=owners,
        )
        DestinationState.objects.filter(node=node, consecutive_failures__gt=0).update(
            consecutive_failures=0, next_attempt_at=None, last_error="", last_success_at=now
        )
    for destination in sorted(set(moved.values())):  # after the writer lock
        schedule_delivery(destination)
    failed_count = sum(len(g) for g in failed.values())
    logger.info(
        "batch delivered",
        extra={
            "node": node,
            "delivered": len(delivered),
            "failed": failed_count,
            "retried": len(retried),
            "resealed": len(resealed),
        },
    )
    return len(delivered), failed_count


def _drain(node: str, lock: HeldLock | None, result: DeliveryResult) -> None:
    for _ in range(MAX_BATCHES_PER_RUN):
        state = DestinationState.objects.filter(node=node, next_attempt_at__isnull=False).first()
        if state is not None and state.next_attempt_at > timezone.now():
            result.retry_in_s = (state.next_attempt_at - timezone.now()).total_seconds()
            return
        rows = _due_rows(node)
        if not rows:
            return
        if lock is not None and not lock.held:
            result.busy = True  # another worker may have the node now: it drains the rest
            return
        try:
            verify_key, acks, refusals = _post_batch(node, rows)
        except _Unreachable as exc:
            result.retry_in_s = _record_failure(node, rows, str(exc))
            return
        # Applied even if the lock was lost meanwhile: acknowledgements are verified per
        # envelope against the bytes sent and refusals concern single envelopes, so a
        # second worker's answer for the same rows agrees. Only a second post must not
        # happen, and none starts once the lock is lost.
        delivered, failed = _apply_answer(node, rows, verify_key, acks, refusals)
        result.delivered += delivered
        result.failed += failed
        result.batches += 1
    result.more = True


def deliver_pending(*, node: str) -> DeliveryResult:
    """Send node's due outbox rows in signed batches until none is left (bounded).

    Safe to run twice at once: a Redis lock keeps one sender per node, and the receiver
    stores each envelope once and acknowledges a duplicate identically.
    """
    result = DeliveryResult(node=node)
    for _ in range(3):
        with node_lock(node) as lock:
            if lock is False:
                result.busy = True
                result.busy_for_s = lock_expires_in_s(node)
                return result
            _drain(node, lock, result)
        if result.busy:
            return result
        if result.retry_in_s is not None or result.more:
            return result  # this task runs again (or the sweeper does): keep the flag
        # Sends skipped their own task while the flag was set. Clear it, then look once
        # more: a row committed before the clear is seen here, a later send enqueues.
        with contextlib.suppress(redis.RedisError):
            redis_client.get().delete(scheduled_key(node))
        if not _has_due(node):
            return result
    result.more = _has_due(node)
    return result


def peer_came_online(node_name: str) -> None:
    """The directory shows node_name reachable again: forget its backoff, send at once."""
    now = timezone.now()
    with transaction.atomic():
        forget_backoff([node_name])
        Outbox.objects.filter(destination=node_name, failed_at__isnull=True).update(
            next_attempt_at=now
        )
        if Outbox.objects.filter(destination=node_name, failed_at__isnull=True).exists():
            transaction.on_commit(lambda: enqueue(node_name, force=True))
    files.pull_again(node=node_name)


# A message whose envelope arrived waits for the recipient's node to say it holds the
# file ("fetched"); that node gives up pulling after DELIVERY_MAX_AGE_S from arrival and
# says so, unless it cannot reach this node: then the message fails here a day later.
FETCH_GRACE_S = 24 * 3600


def _fail_unfetched(now) -> None:
    cutoff = now - timedelta(seconds=settings.DELIVERY_MAX_AGE_S + FETCH_GRACE_S)
    stuck = Message.objects.filter(status=Message.Status.SENT, stored_at__lt=cutoff)
    ids = list(stuck.values_list("id", flat=True)[:1000])
    if not ids:
        return
    owners = live.owners(ids)
    with transaction.atomic():
        Message.objects.filter(id__in=ids, status=Message.Status.SENT).update(
            status=Message.Status.FAILED, error="file_not_fetched"
        )
        live.announce(ids, "status", known=owners)
    logger.warning("files never fetched", extra={"count": len(ids)})


def sweep_outbox() -> list[str]:
    """Fail envelopes older than DELIVERY_MAX_AGE_S and re-enqueue every destination with
    due rows (tasks lost to a Redis flush or a killed worker). Returns those nodes."""
    now = timezone.now()
    cutoff = now - timedelta(seconds=settings.DELIVERY_MAX_AGE_S)
    expired = list(
        Outbox.objects.filter(failed_at__isnull=True, queued_at__lt=cutoff)
        .exclude(kind="group_record")  # a group's changes wait for its member's node
        .values_list("id", "message_id")
    )
    if expired:
        owners = live.owners(m for _, m in expired if m)
        with transaction.atomic():
            Message.objects.filter(
                id__in=[m for _, m in expired if m],
                status=Message.Status.QUEUED,
                group__isnull=True,
            ).update(status=Message.Status.FAILED, error="expired")
            group_messages.refused(
                list(
                    Outbox.objects.filter(
                        id__in=[o for o, _ in expired], kind__in=group_messages.GROUP_ROW_KINDS
                    )
                ),
                "expired",
                now=now,
            )
            Outbox.objects.filter(id__in=[o for o, m in expired if m]).update(
                failed_at=now, last_error="expired"
            )
            Outbox.objects.filter(id__in=[o for o, m in expired if not m]).delete()
            live.announce([m for _, m in expired if m], "status", known=owners)
        logger.warning("undelivered envelopes expired", extra={"count": len(expired)})
    _fail_unfetched(now)
    due = set(
        Outbox.objects.filter(failed_at__isnull=True, next_attempt_at__lte=now)
        .values_list("destination", flat=True)
        .distinct()
    )
    waiting = set(
        DestinationState.objects.filter(node__in=due, next_attempt_at__gt=now).values_list(
            "node", flat=True
        )
    )
    nodes = sorted(due - waiting)
    for node in nodes:
        enqueue(node, force=True)
    return nodes
