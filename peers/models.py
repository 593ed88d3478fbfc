"""Peers: this node's identity, the directory cache of other nodes and users, and nonces."""

from django.conf import settings
from django.db import models


class SeenNonce(models.Model):
    """A request nonce already used by a node; a second use is a replay."""

    node = models.CharField(max_length=63)
    nonce = models.CharField(max_length=32)
    timestamp = models.BigIntegerField(help_text="the request's own timestamp (unix seconds)")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["node", "nonce"], name="unique_node_nonce"),
        ]

    def __str__(self) -> str:
        return f"{self.node}:{self.nonce}"


class NodeIdentity(models.Model):
    """This office node's name, key and the login server it joined (one row, pk=1)."""

    name = models.CharField(max_length=63)
    public_url = models.URLField(max_length=300)
    sign_public = models.BinaryField(max_length=32)
    sign_private_encrypted = models.BinaryField()
    sign_pending_encrypted = models.BinaryField(
        null=True,
        blank=True,
        help_text="the new key of a rotation sent to the login server but not yet confirmed",
    )
    login_server_url = models.URLField(max_length=300)
    login_server_key = models.BinaryField(max_length=32, help_text="pinned when joining")
    joined_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "node identity"

    def __str__(self) -> str:
        return self.name


class PeerNode(models.Model):
    """An office node of the network, as the login server's directory describes it."""

    name = models.CharField(max_length=63, unique=True)
    url = models.URLField(max_length=300)
    sign_key = models.BinaryField(max_length=32)
    active = models.BooleanField(default=True, help_text="false once revoked")
    online = models.BooleanField(default=False, help_text="reporting to the login server")
    last_report_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return self.name


class DirectoryUser(models.Model):
    """A person of the network (any node, this one included), from a verified user record."""

    class Status(models.TextChoices):
        ONLINE = "online"
        AWAY = "away"
        OFFLINE = "offline"
        UNKNOWN = "unknown"

    username = models.CharField(max_length=150, unique=True)
    node = models.ForeignKey(PeerNode, on_delete=models.CASCADE, related_name="users")
    sign_key = models.BinaryField(max_length=32)
    box_key = models.BinaryField(max_length=32)
    full_name = models.CharField(max_length=150, blank=True)
    position = models.CharField(max_length=150, blank=True)
    record = models.BinaryField(help_text="the exact user record bytes signed by the login server")
    record_sig = models.BinaryField(max_length=64)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.UNKNOWN)
    last_seen = models.DateTimeField(null=True, blank=True)
    keys_changed_at = models.DateTimeField(null=True, blank=True)
    listed = models.BooleanField(default=True, help_text="present in the latest directory")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return self.username


class KeyChangeAck(models.Model):
    """A local person confirmed they verified another user's new keys."""

    viewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="key_change_acks"
    )
    user = models.ForeignKey(DirectoryUser, on_delete=models.CASCADE, related_name="key_acks")
    acknowledged_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["viewer", "user"], name="unique_key_change_ack"),
        ]

    def __str__(self) -> str:
        return f"{self.viewer_id} verified {self.user_id}"


class DirectorySync(models.Model):
    """How the last directory fetches went (one row, pk=1): for staleness banners and /health."""

    etag = models.CharField(max_length=100, blank=True)
    # The "generated_ms" time (Unix milliseconds) of the newest directory applied: older
    # ones are refused, so a replayed answer cannot roll the cache back.
    generated = models.BigIntegerField(default=0)
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=200, blank=True)
    refused_usernames = models.JSONField(
        default=list,
        blank=True,
        help_text='names the login server refused in the latest report, [{"username", "code"}]:'
        " another node holds them, so these people are not in the directory",
    )

    class Meta:
        verbose_name_plural = "directory sync"

    def __str__(self) -> str:
        return f"directory fetched {self.last_success_at or 'never'}"


class RemoteProfile(models.Model):
    """The profile of a person of another office, as their own node served and signed it:
    cached, so that it shows (with its age) while that office cannot be reached."""

    username = models.CharField(max_length=150, unique=True)
    node = models.CharField(max_length=63, help_text="the node that served and signed it")
    body = models.BinaryField(help_text="the exact profile bytes the node signed")
    signature = models.BinaryField(max_length=64)
    served_ms = models.BigIntegerField(help_text="the serving node's clock, Unix milliseconds")
    fetched_at = models.DateTimeField(help_text="when this copy was fetched and verified")
    refresh_failed_at = models.DateTimeField(
        null=True, blank=True, help_text="the latest refresh, if it failed since fetched_at"
    )
    refresh_error = models.CharField(max_length=60, blank=True)
    picture = models.BinaryField(
        null=True,
        blank=True,
        help_text="the picture bytes (at most P2P_PROFILE_PICTURE_MAX_BYTES), checked against"
        " the signed hash, size and type",
    )
    picture_mime = models.CharField(max_length=20, blank=True)
    picture_sha256 = models.CharField(max_length=64, blank=True)

    def __str__(self) -> str:
        return f"profile of {self.username} from {self.node}"
