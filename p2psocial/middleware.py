"""Cross-cutting HTTP middleware: request ids, the Content Security Policy, busy writes."""

import re
import secrets
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from peers.auth import WriterBusy

from .logging import request_id_var

_VALID_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def request_id_from(incoming: str) -> str:
    """A peer's X-Request-Id when it is well formed, else a new one."""
    return incoming if _VALID_ID.fullmatch(incoming) else secrets.token_hex(8)


class RequestIdMiddleware:
    """Takes a peer's X-Request-Id (so one message can be followed across nodes) or makes one."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = request_id_from(request.headers.get("X-Request-Id", ""))
        request.request_id = request_id
        token = request_id_var.set(request_id)
        try:
            response = self.get_response(request)
        finally:
            request_id_var.reset(token)
        response["X-Request-Id"] = request_id
        return response


class ContentSecurityPolicyMiddleware:
    """A strict CSP on every response: no inline scripts or styles, no framing."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        response.setdefault("Content-Security-Policy", settings.CSP_POLICY)
        return response


class WriterBusyMiddleware:
    """A write refused because the database stayed busy (peers.auth.WriterBusy) is a 503
    "try again" answer with Retry-After, not a 500: nothing of the request was saved."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, WriterBusy):
            return None
        if request.path.endswith(".json") or "application/json" in request.headers.get(
            "Accept", ""
        ):
            response = JsonResponse({"error": exception.as_dict()}, status=503)
        else:
            response = render(request, "503.html", status=503)
        response["Retry-After"] = str(exception.retry_after_s)
        return response
