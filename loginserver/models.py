"""The login server's state: its own key, enrolled nodes, tokens, user records and presence."""

from django.db import models


class ServerKey(models.Model):
    """The login server's ed25519 key (one row, pk=1), private part encrypted at rest."""

    sign_public = models.BinaryField(max_length=32)
    sign_private_encrypted = models.BinaryField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return "login server key"


class Node(models.Model):
    """An enrolled office node; a revoked node is refused and hidden from the directory."""

    name = models.CharField(max_length=63, unique=True)
    url = models.URLField(max_length=300)
    sign_key = models.BinaryField(max_length=32)
    active = models.BooleanField(default=True)
    enrolled_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_report_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return self.name


class EnrolmentToken(models.Model):
    """A one-time token for one node name; only its SHA-256 is stored."""

    node_name = models.CharField(max_length=63)
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)
    used_by = models.ForeignKey(Node, null=True, blank=True, on_delete=models.SET_NULL)

    def __str__(self) -> str:
        return f"enrolment token for {self.node_name}"


class UserRecord(models.Model):
    """A user of one node: public keys, the record the login server signed, and presence.

    The username belongs to the node that first reported it. When the node's reports
    leave it out, the record stays, unlisted (not in the directory), so the name stays
    reserved to that node until the node is revoked or an administrator releases it.
    """

    class Status(models.TextChoices):
        ONLINE = "online"
        AWAY = "away"
        OFFLINE = "offline"

    username = models.CharField(max_length=150, unique=True)
    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="users")
    sign_key = models.BinaryField(max_length=32)
    box_key = models.BinaryField(max_length=32)
    full_name = models.CharField(max_length=150, blank=True)
    position = models.CharField(max_length=150, blank=True)
    record = models.BinaryField()
    record_sig = models.BinaryField(max_length=64)
    issued = models.BigIntegerField()
    expires = models.BigIntegerField()
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.OFFLINE)
    last_seen = models.BigIntegerField(null=True, blank=True, help_text="unix seconds")
    listed = models.BooleanField(
        default=True,
        help_text="in the node's latest report and the directory; if not, the name stays "
        "reserved to the node",
    )
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return self.username


class DirectoryVersion(models.Model):
    """A random token (one row, pk=1) replaced on every visible change; keys the directory cache."""

    token = models.CharField(max_length=32, default="")

    def __str__(self) -> str:
        return f"directory version {self.token}"
