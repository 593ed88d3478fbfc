"""Peers: this node's identity, the directory cache of other nodes and users, and nonces."""

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
