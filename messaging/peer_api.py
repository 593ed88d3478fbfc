"""The peer API of an office node: POST /api/v1/inbox receives a signed batch of envelopes."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from peers import directory, protocol
from peers.auth import (
    error_response,
    log_refusal,
    read_body,
    record_nonce,
    storage_errors_refused,
    verify_signed,
    write_transaction,
)

from . import receiving


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
