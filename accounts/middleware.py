"""Browser-side gates: a verified second factor for every page, and the person's last activity."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from urllib.parse import urlencode

from django.conf import settings
from django.db import DatabaseError, transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.urls import reverse
from django.utils import timezone

from .models import User
from .twofactor import has_second_factor

# Reachable without a verified second factor. /admin/ has its own OTP login (django-otp).
_OPEN_PREFIXES = ("/login/", "/setup/2fa/", "/logout/", "/static/", "/health", "/api/")
_OPEN_EXACT = ("/favicon.ico", "/robots.txt")


# Pages whose query string is nobody's business (what someone searched for): a login
# redirect comes back to them without it.
_NEXT_WITHOUT_QUERY = frozenset({"/search/"})


def _is_open(path: str) -> bool:
    return path in _OPEN_EXACT or path.startswith(_OPEN_PREFIXES)


def _wants_json(request: HttpRequest) -> bool:
    accept = request.headers.get("Accept", "")
    return request.path.endswith(".json") or (
        "application/json" in accept or "text/event-stream" in accept
    )


class SecondFactorRequiredMiddleware:
    """Every page needs a person who passed both factors; others go to login, enrol or verify."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if settings.IS_LOGIN_SERVER or _is_open(request.path):
            return self.get_response(request)
        user = request.user
        if user.is_authenticated and user.is_verified():
            return self.get_response(request)
        if request.path.startswith("/admin/") and not user.is_authenticated:
            return self.get_response(request)  # the OTP admin login asks for both factors
        if _wants_json(request):
            return JsonResponse(
                {"error": {"code": "login_required", "message": "Log in to continue."}},
                status=401,
            )
        if not user.is_authenticated:
            target = reverse("accounts:login")
        elif has_second_factor(user):
            target = reverse("accounts:verify")
        else:
            target = reverse("accounts:enrol")
        if request.method == "GET":
            # A search's terms stay out of the login form, its session and django-axes'
            # record of failed attempts: the person comes back to an empty search.
            private_query = request.path in _NEXT_WITHOUT_QUERY
            back = request.path if private_query else request.get_full_path()
            target += "?" + urlencode({"next": back})
        return HttpResponseRedirect(target)


class ActivityMiddleware:
    """Keeps User.last_activity fresh for presence, with at most one UPDATE per interval."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated and user.is_verified():
            now = timezone.now()
            interval = timedelta(seconds=settings.ACTIVITY_WRITE_INTERVAL_S)
            if user.last_activity is None or now - user.last_activity >= interval:
                try:
                    with transaction.atomic():  # a refusal leaves the request's other work
                        User.objects.filter(pk=user.pk).update(last_activity=now)
                    user.last_activity = now
                except DatabaseError as error:
                    # Presence can wait for the next request; the page the person asked
                    # for must not become a 500 because the database is busy or full.
                    from peers.auth import storage_refusal  # the one mapping of such errors

                    if storage_refusal(error) is None:
                        raise
        return self.get_response(request)
