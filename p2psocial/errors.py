"""Error answers that depend on who asks: JSON for peers (under /api/), pages for people."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.views.defaults import page_not_found

from peers import protocol
from peers.auth import error_response

API_PREFIX = "/api/"


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """A peer asking for an API path that does not exist (say, a newer protocol version)
    gets the typed JSON error the protocol promises, not an HTML page."""
    if request.path.startswith(API_PREFIX):
        return error_response(
            protocol.ProtocolError("not_found", f"no such API endpoint: {request.path}", 404)
        )
    return page_not_found(request, exception)
