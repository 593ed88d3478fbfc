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
    # A group message: peer_username is group_conversation_key(group id), and every copy
    # (the sender's, each recipient's) holds the message's id on the wire here; a
    # recipient's copy has an envelope_id of its own (random: several may be local).
    group = models.ForeignKey(
        "Group", null=True, blank=True, on_delete=models.CASCADE, related_name="messages"
    )
    group_message_id = models.UUIDField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["envelope_id", "direction"], name="unique_message_envelope_direction"
            ),
            # One copy of a group message per recipient, however often it is sent.
            models.UniqueConstraint(
                fields=["owner", "group_message_id"],
                condition=Q(direction="in", group_message_id__isnull=False),
                name="unique_group_message_copy",
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


class Group(models.Model):
    """A group conversation as this node knows it: the state after its changes up to seq
    (peers.groups.apply of its GroupRecords in order). Members, current and former, are
    GroupMember rows."""

    group_id = models.UUIDField(unique=True)
    home_node = models.CharField(max_length=63, help_text="its creator's node: it numbers changes")
    name = models.CharField(max_length=100)
    seq = models.PositiveIntegerField(help_text="the last change applied")
    head = models.CharField(max_length=64, help_text="sha256 of the last sequence record")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name

    @property
    def conversation_key(self) -> str:
        return group_conversation_key(self.group_id)


GROUP_KEY_PREFIX = "group:"  # never a username (usernames have no colon)


def group_conversation_key(group_id) -> str:
    """What a group message holds as its peer_username: the conversation it belongs to."""
    return f"{GROUP_KEY_PREFIX}{group_id}"


class GroupRecord(models.Model):
    """One numbered change of a group: the author's signed event and the home node's
    signed sequence record, exactly as received (or made), kept to send to nodes that
    join later."""

    group = models.ForeignKey(Group, on_delete=models.CASCADE, related_name="records")
    seq = models.PositiveIntegerField()
    event_raw = models.BinaryField()
    event_sig = models.BinaryField(max_length=64)
    record_raw = models.BinaryField()
    record_sig = models.BinaryField(max_length=64)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["group", "seq"], name="unique_group_record_seq")
        ]

    def __str__(self) -> str:
        return f"{self.group_id} #{self.seq}"


class GroupMember(models.Model):
    """One span of a person's membership: from the change that added them to the one
    that removed them (left_seq), open while they are a member."""

    group = models.ForeignKey(Group, on_delete=models.CASCADE, related_name="members")
    username = models.CharField(max_length=150)
    node = models.CharField(max_length=63)
    admin = models.BooleanField(default=False)
    joined_seq = models.PositiveIntegerField()
    left_seq = models.PositiveIntegerField(null=True, blank=True)
    left_at = models.DateTimeField(null=True, blank=True, help_text="when this node applied it")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["group", "username", "joined_seq"], name="unique_group_member_span"
            )
        ]
        indexes = [models.Index(fields=["username", "left_seq"], name="group_member_of")]

    def __str__(self) -> str:
        return f"{self.username}@{self.node} in {self.group_id}"


class GroupNodeSync(models.Model):
    """On a group's home node: how many of its records each other node has been sent."""

    group = models.ForeignKey(Group, on_delete=models.CASCADE, related_name="synced")
    node = models.CharField(max_length=63)
    sent_seq = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["group", "node"], name="unique_group_node_sync")
        ]

    def __str__(self) -> str:
        return f"{self.group_id} → {self.node} up to {self.sent_seq}"


class GroupDelivery(models.Model):
    """The sender's view of one recipient of a group message: delivered (their node
    acknowledged it), read, or failed (their node refused it or stayed away too long)."""

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="deliveries")
    username = models.CharField(max_length=150)
    node = models.CharField(max_length=63)
    delivered_at = models.DateTimeField(null=True, blank=True)
    read_at = models.DateTimeField(null=True, blank=True)
    error = models.CharField(max_length=64, blank=True)

    class Meta:
        verbose_name_plural = "group deliveries"
        constraints = [
            models.UniqueConstraint(
                fields=["message", "username"], name="unique_group_delivery_recipient"
            )
        ]

    def __str__(self) -> str:
        return f"{self.message_id} → {self.username}"
