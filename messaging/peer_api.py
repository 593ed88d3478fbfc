"""The peer API of an office node: POST /api/v1/inbox receives a signed batch of envelopes."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from peers import directory, protocol
from peers.auth import KnownNode, signed_endpoint

from . import services


@signed_endpoint(directory.resolve_peer_node)
def inbox(request: HttpRequest, node: KnownNode) -> dict[str, Any]:
    """Answer {"acks": [...], "errors": [...]}; a malformed batch is refused whole (4xx)."""
    items = protocol.parse_batch(request.signed_body)
    return services.accept_envelopes(items, from_node=node)
