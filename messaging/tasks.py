"""Celery tasks for delivery and file pulls: take a node name, call a service, nothing else."""

from __future__ import annotations

from celery import shared_task

from peers.auth import StorageFull, WriterBusy

from . import delivery, files

# Backoffs up to this long are waited out by Celery; longer ones are the sweeper's.
SHORT_RETRY_S = 60.0
# A task that finds the node's lock taken looks once more just after it would expire: if
# its holder was killed, the queue moves then, not at the next sweep. Only a first run
# does, so tasks for a node that a live worker drains end instead of circling.
LOCK_EXPIRY_MARGIN_S = 0.2


@shared_task(bind=True, name="messaging.tasks.deliver_to_node", acks_late=True, max_retries=None)
def deliver_to_node(self, node_name: str) -> None:
    """Drain the outbox of one destination node in signed batches."""
    try:
        result = delivery.deliver_pending(node=node_name)
    except WriterBusy as busy:  # another writer kept the database: nothing half-done
        raise self.retry(countdown=busy.retry_after_s) from None
    except StorageFull:  # this node's own disk is full: nothing half-done, try again later
        raise self.retry(countdown=SHORT_RETRY_S) from None
    if result.busy_for_s is not None and not self.request.retries:
        raise self.retry(countdown=result.busy_for_s + LOCK_EXPIRY_MARGIN_S)
    if result.more:
        raise self.retry(countdown=0)
    if result.retry_in_s is not None and result.retry_in_s <= SHORT_RETRY_S:
        raise self.retry(countdown=result.retry_in_s)


@shared_task(bind=True, name="messaging.tasks.pull_files", acks_late=True, max_retries=None)
def pull_files(self, node_name: str) -> None:
    """Pull the files of messages from one node's people, one at a time."""
    try:
        result = files.pull_pending(node=node_name)
    except WriterBusy as busy:
        raise self.retry(countdown=busy.retry_after_s) from None
    except StorageFull:
        raise self.retry(countdown=SHORT_RETRY_S) from None
    if result.more:
        raise self.retry(countdown=0)
    if result.retry_in_s is not None and result.retry_in_s <= SHORT_RETRY_S:
        raise self.retry(countdown=result.retry_in_s)


@shared_task(name="messaging.tasks.sweep_outbox", acks_late=True)
def sweep_outbox() -> None:
    """Re-enqueue due deliveries and pulls whose task was lost; fail what is past the
    maximum age."""
    delivery.sweep_outbox()
    files.sweep_pulls()
