"""Incoming signed requests: one decorator for every server-to-server endpoint.

It enforces the body limit, parses and verifies the node signature (timestamp window
and signature via peers.protocol), refuses a reused nonce, and maps every
ProtocolError to a JSON 4xx with a stable code. The nonce is recorded in the same
transaction as the view's writes, so a request is either wholly applied or not at all.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import wraps
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from . import protocol
from .models import SeenNonce

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KnownNode:
    """What a resolver returns for a node allowed to call: its name, key and model row."""

    name: str
    verify_key: bytes
    obj: Any


NodeResolver = Callable[[str], KnownNode]
SignedView = Callable[[HttpRequest, KnownNode], dict[str, Any] | tuple[dict[str, Any], int]]


def error_response(error: protocol.ProtocolError) -> JsonResponse:
    return JsonResponse({"error": error.as_dict()}, status=error.status)


def read_body(request: HttpRequest) -> bytes:
    """The exact request bytes, refused with 413 when over the limit."""
    limit = settings.PEER_MAX_BODY_BYTES
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise protocol.ProtocolError("bad_request", "invalid Content-Length") from None
    if declared > limit:
        raise protocol.ProtocolError("body_too_large", f"body exceeds {limit} bytes", 413)
    body = request.read(limit + 1)
    if len(body) > limit:
        raise protocol.ProtocolError("body_too_large", f"body exceeds {limit} bytes", 413)
    return body


_last_prune = 0.0


def prune_seen_nonces() -> int:
    """Forget nonces older than twice the timestamp window: their requests are stale anyway."""
    cutoff = timezone.now() - timedelta(seconds=2 * settings.REQUEST_MAX_SKEW_S)
    deleted, _ = SeenNonce.objects.filter(created_at__lt=cutoff).delete()
    return deleted


def _prune_now_and_then() -> None:
    # Both roles prune from the request path (the login server runs no beat); at most
    # once per NONCE_PRUNE_INTERVAL_S per process.
    global _last_prune
    now = time.monotonic()
    if now - _last_prune >= settings.NONCE_PRUNE_INTERVAL_S:
        _last_prune = now
        prune_seen_nonces()


def authenticate(request: HttpRequest, body: bytes, resolve: NodeResolver) -> KnownNode:
    """Verify the Authorization header of a request; raises ProtocolError."""
    auth = protocol.parse_auth_header(request.headers.get("Authorization"))
    node = resolve(auth.node)
    protocol.verify_request(
        node.verify_key,
        auth,
        method=request.method or "",
        path=request.get_full_path(),
        body=body,
        max_skew_s=settings.REQUEST_MAX_SKEW_S,
    )
    _prune_now_and_then()
    try:
        with transaction.atomic():
            SeenNonce.objects.create(node=auth.node, nonce=auth.nonce, timestamp=auth.timestamp)
    except IntegrityError:
        raise protocol.ProtocolError("replayed_nonce", "this nonce was already used", 401) from None
    return node


def signed_endpoint(resolve: NodeResolver, *, methods: tuple[str, ...] = ("POST",)):
    """Decorate a view `(request, node) -> dict | (dict, status)` as a signed JSON endpoint."""

    def decorate(view: SignedView):
        @csrf_exempt
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
            if request.method not in methods:
                error = protocol.ProtocolError(
                    "method_not_allowed", f"use {' or '.join(methods)}", 405
                )
                return error_response(error)
            try:
                body = read_body(request)
                with transaction.atomic():
                    node = authenticate(request, body, resolve)
                    request.signed_body = body
                    result = view(request, node, *args, **kwargs)
            except protocol.ProtocolError as error:
                logger.warning(
                    "signed request refused",
                    extra={
                        "code": error.code,
                        "path": request.path,
                        "remote": request.META.get("REMOTE_ADDR"),
                    },
                )
                return error_response(error)
            payload, status = result if isinstance(result, tuple) else (result, 200)
            return JsonResponse(payload, status=status, json_dumps_params={"ensure_ascii": False})

        return wrapper

    return decorate
