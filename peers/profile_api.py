"""The profile API of an office node: GET /api/v1/profiles/<username> answers a person's
profile signed by this node's key, GET /api/v1/profiles/<username>/picture their picture.
Both are signed GETs from any enrolled, active node."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from . import directory, protocol, services
from .auth import error_response, verify_signed_get

_NOT_FOUND = protocol.ProtocolError("profile_not_found", "no such person on this node", 404)


def _is_username(name: str) -> bool:
    try:
        protocol.validate_username(name)
    except protocol.ProtocolError:
        return False
    return True


def _refusal(request: HttpRequest) -> HttpResponse | None:
    """None for a GET signed by an active node of the directory (its nonce claimed);
    otherwise the refusal to answer."""
    return verify_signed_get(request, resolve=directory.resolve_peer_node)[1]


@csrf_exempt  # signed by a node, never sent with a browser's cookies
def profile(request: HttpRequest, username: str) -> HttpResponse:
    """The profile of an active person of this node, as canonical JSON, with this node's
    signature over b"p2psocial/v1/profile\\x00" + body in X-P2P-Signature."""
    refused = _refusal(request)
    if refused is not None:
        return refused
    answer = services.profile_answer(username=username) if _is_username(username) else None
    if answer is None:
        return error_response(_NOT_FOUND)
    body, signature = answer
    response = HttpResponse(body, content_type="application/json")
    response["X-P2P-Signature"] = protocol.b64e(signature)
    response["Cache-Control"] = "no-store"
    return response


@csrf_exempt
def picture(request: HttpRequest, username: str) -> HttpResponse:
    """The picture bytes of an active person of this node, exactly those whose SHA-256,
    size and type their profile carries."""
    refused = _refusal(request)
    if refused is not None:
        return refused
    found = services.local_picture(username=username) if _is_username(username) else None
    if found is None:
        return error_response(
            protocol.ProtocolError("picture_not_found", "this person has no picture", 404)
        )
    data, mime = found
    response = HttpResponse(data, content_type=mime)
    response["X-Content-Type-Options"] = "nosniff"
    response["Cache-Control"] = "no-store"
    return response
