"""The peer API of an office node: POST /api/v1/inbox receives a signed batch of envelopes,
GET /api/v1/files/<id> serves a sent file's ciphertext to its recipient's node."""

from __future__ import annotations

import logging
import uuid

from django.db.models import Q
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from p2psocial.serving import iter_open_file, ranged_response
from peers import directory, protocol
from peers.auth import (
    error_response,
    log_refusal,
    read_body,
    record_nonce,
    storage_errors_refused,
    verify_signed,
    verify_signed_get,
    write_transaction,
)

from . import files, receiving
from .models import Attachment, Message

logger = logging.getLogger(__name__)


@csrf_exempt
def inbox(request: HttpRequest) -> JsonResponse:
    """Answer {"acks": [...], "errors": [...]}; a malformed batch is refused whole (4xx).

    The steps of peers.auth.signed_endpoint, except that the envelopes are checked and
    decrypted between verifying the request and the write transaction: the node's SQLite
    writer is held only to claim the nonce and store, never for a batch's cryptography.
    """
    if request.method != "POST":
        return error_response(protocol.ProtocolError("method_not_allowed", "use POST", 405))
    path = request.get_full_path()
    try:
        with storage_errors_refused():  # a busy or full database: 503 or 507, never a 500
            body = read_body(request)
            node, auth = verify_signed(
                method=request.method,
                path=path,
                authorization=request.headers.get("Authorization"),
                body=body,
                resolve=directory.resolve_peer_node,
            )
            batch = receiving.check_envelopes(protocol.parse_batch(body), from_node=node)
            with write_transaction():  # the nonce and the envelopes: both or neither
                record_nonce(auth)
                answer = receiving.store_envelopes(batch=batch)
    except protocol.ProtocolError as error:
        log_refusal(error, path=path, remote=request.META.get("REMOTE_ADDR"))
        return error_response(error)
    return JsonResponse(answer, json_dumps_params={"ensure_ascii": False})


@csrf_exempt  # signed by a node, never sent with a browser's cookies
def file_blob(request: HttpRequest, file_id: str) -> HttpResponse:
    """GET /api/v1/files/<id>, signed: the ciphertext of a file this node sent, for the
    node of its recipient (of a recipient of its group message) only (anyone else: 404,
    as for a file that does not exist). A single Range resumes an interrupted pull."""
    node, refused = verify_signed_get(request, resolve=directory.resolve_peer_node)
    if refused is not None:
        return refused
    try:
        file_uuid = uuid.UUID(file_id)
    except ValueError:
        file_uuid = None
    # The node of its one-to-one recipient, or of one of its group message's recipients.
    attachment = file_uuid and (
        Attachment.objects.filter(
            Q(node=node.name)
            | Q(node="", message__group__isnull=False, message__deliveries__node=node.name),
            file_id=file_uuid,
            state=Attachment.State.STORED,
            message__direction=Message.Direction.OUT,
        )
        .select_related("message")
        .first()
    )
    if attachment is None:
        return error_response(protocol.ProtocolError("file_not_found", "no such file", 404))
    blob = files.attachment_path(attachment)
    if not blob.is_file():
        # lost from FILES_DIR: a clear 404 rather than a 200 cut short, which the
        # recipient's node would retry until the message expires
        logger.error("sent file missing", extra={"file": str(file_uuid), "node": node.name})
        return error_response(protocol.ProtocolError("file_not_found", "no such file", 404))
    return ranged_response(
        request,
        size=files.ciphertext_size(attachment),
        content_type="application/octet-stream",
        read=lambda start, end: iter_open_file(blob, start, end),
    )
