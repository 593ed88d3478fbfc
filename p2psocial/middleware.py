"""Cross-cutting HTTP middleware: request ids, the Content Security Policy, busy or full
storage."""

import re
import secrets
from collections.abc import Callable

from django.conf import settings
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.loader import get_template

from peers.auth import StorageFull, WriterBusy, storage_refusal

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
    "try again" answer with Retry-After, and one refused because its disk is full
    (StorageFull) a 507, not a 500: nothing of the request was saved. A view's own write
    outside the writer queue (the admin's forms, the login) that SQLite refuses as locked
    or full is answered the same way."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, DatabaseError):
            exception = storage_refusal(exception)
        if not isinstance(exception, WriterBusy | StorageFull):
            return None
        if request.path.endswith(".json") or "application/json" in request.headers.get(
            "Accept", ""
        ):
            response = JsonResponse({"error": exception.as_dict()}, status=exception.status)
        else:
            name = "503.html" if exception.status == 503 else "507.html"
            page = get_template(name).render({}, request)
            response = HttpResponse(page, status=exception.status)
        if isinstance(exception, WriterBusy):
            response["Retry-After"] = str(exception.retry_after_s)
        return response
