"""Messages, the outbox of envelopes to deliver, per-destination backoff, received envelopes."""

from __future__ import annotations

from django.conf import settings
from django.contrib.postgres.search import SearchVectorField
from django.db import models
from django.db.models import Q


class Message(models.Model):
    """One message as its local owner sees it: sent (out) or received (in).

    A message between two people of this node is stored twice, once per owner, under
    the same envelope id.
    """

    class Direction(models.TextChoices):
        OUT = "out", "sent"
        IN = "in", "received"

    class Status(models.TextChoices):
        QUEUED = "queued"
        SENT = "sent"  # the envelope arrived; its file is still on its way
        DELIVERED = "delivered"
        READ = "read"
        FAILED = "failed"

    envelope_id = models.UUIDField()
    kind = models.CharField(max_length=16, default="message")
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="messages"
    )
    peer_username = models.CharField(max_length=150, help_text="the other person")
    sender_username = models.CharField(max_length=150)
    recipient_username = models.CharField(max_length=150)
    direction = models.CharField(max_length=3, choices=Direction.choices)
    text = models.TextField()
    created_ms = models.BigIntegerField(help_text="the sender's clock, ms since the epoch")
    status = models.CharField(max_length=9, choices=Status.choices, default=Status.QUEUED)
    stored_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    read_at = models.DateTimeField(null=True, blank=True)
    error = models.CharField(max_length=64, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["envelope_id", "direction"], name="unique_message_envelope_direction"
            ),
        ]
        indexes = [
            models.Index(
                fields=["owner", "peer_username", "created_ms", "id"], name="message_conversation"
            ),
            models.Index(
                fields=["owner", "peer_username", "direction", "read_at"], name="message_unread"
            ),
            models.Index(fields=["status"], name="message_status"),
        ]

    def __str__(self) -> str:
        return f"{self.direction} {self.envelope_id}"


class Outbox(models.Model):
    """An envelope waiting for a signed acknowledgement from its destination node."""

    envelope_id = models.UUIDField(unique=True)
    kind = models.CharField(max_length=16)
    destination = models.CharField(max_length=63, help_text="node name")
    raw = models.BinaryField(help_text="the exact envelope bytes that were signed")
    signature = models.BinaryField(max_length=64)
    earlier_sealings = models.JSONField(
        default=list,
        blank=True,
        help_text="b64 of this envelope's earlier bytes, sealed before its sender's keys "
        "changed: the receiver may hold one of them (its acknowledgement lost)",
    )
    message = models.ForeignKey(
        Message, null=True, blank=True, on_delete=models.CASCADE, related_name="outbox"
    )
    read_ids = models.JSONField(
        default=list,
        blank=True,
        help_text="a read receipt's message envelope ids, kept so that it can be sealed "
        "again when its recipient's or its sender's keys change instead of being lost",
    )
    attempts = models.PositiveIntegerField(default=0)
    queued_at = models.DateTimeField(help_text="when sending (or the last manual retry) began")
    next_attempt_at = models.DateTimeField()
    failed_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=200, blank=True)

    class Meta:
        verbose_name_plural = "outbox"
        indexes = [
            models.Index(
                fields=["destination", "id"],
                name="outbox_pending",
                condition=Q(failed_at__isnull=True),
            ),
            models.Index(
                fields=["next_attempt_at"],
                name="outbox_due",
                condition=Q(failed_at__isnull=True),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.envelope_id} → {self.destination}"


class DestinationState(models.Model):
    """Backoff for one destination node: after failures, wait before the next attempt."""

    node = models.CharField(max_length=63, unique=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=200, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return self.node


class ReceivedEnvelope(models.Model):
    """An envelope this node stored; the id and hash make redelivery exactly-once."""

    envelope_id = models.UUIDField(unique=True)
    sha256 = models.CharField(max_length=64)
    kind = models.CharField(max_length=16)
    sender = models.CharField(max_length=150)
    sender_node = models.CharField(max_length=63)
    stored_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return str(self.envelope_id)


class Attachment(models.Model):
    """The file of a message: its ciphertext lives in FILES_DIR, its key here, encrypted
    under the node's master key. The sender's node holds it from the upload on; the
    recipient's node pulls it from there (state pending) and keeps it once verified."""

    class State(models.TextChoices):
        PENDING = "pending"  # not pulled (or not verified) yet
        STORED = "stored"  # the whole file, verified
        FAILED = "failed"  # refused: see error

    message = models.OneToOneField(Message, on_delete=models.CASCADE, related_name="attachment")
    file_id = models.UUIDField(help_text="the file's id on the wire")
    node = models.CharField(
        max_length=63, help_text="the other node: the one that may pull it, or the one to pull from"
    )
    name = models.CharField(max_length=160)
    mime = models.CharField(max_length=100)
    kind = models.CharField(max_length=16)
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64, help_text="of the plaintext")
    key = models.BinaryField(help_text="the file key, encrypted under the master key")
    preview = models.BinaryField(null=True, blank=True, help_text="a small JPEG, images only")
    state = models.CharField(max_length=8, choices=State.choices, default=State.PENDING)
    error = models.CharField(max_length=64, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    stored_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["file_id"], name="attachment_file"),
            models.Index(
                fields=["node", "id"],
                name="attachment_pending",
                condition=Q(state="pending"),
            ),
        ]

    def __str__(self) -> str:  # no name: it says what the document is (admin, logs)
        return f"{self.file_id} ({self.mime}, {self.size} bytes)"


class MessageSearch(models.Model):
    """A message's words for full-text search on PostgreSQL: its text and its file's name
    as a tsvector (text search configuration p2p_search: unaccented, no stemming, so any
    language), under a GIN index. Database triggers keep it in step in the transaction that
    stores a message or its attachment (migration 0006); nothing in Python writes it.

    On SQLite this table stays empty: the FTS5 table messaging_message_fts, kept in step by
    triggers too, does the same job. messaging/search.py queries whichever is there."""

    message = models.OneToOneField(
        Message, primary_key=True, on_delete=models.CASCADE, related_name="search_entry"
    )
    document = SearchVectorField()

    def __str__(self) -> str:
        return f"search entry of message {self.message_id}"
