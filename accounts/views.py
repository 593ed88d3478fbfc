"""Browser pages of accounts: form → service → redirect or render. No business logic here."""

from __future__ import annotations

import logging

from django.contrib import messages
from django.contrib.auth import authenticate, logout
from django.contrib.auth import login as auth_login
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import NoReverseMatch, reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods
from django_otp import login as otp_login
from django_otp.models import Device

from p2psocial.serving import iter_open_file, user_file_response

from . import queries, services, sessions, twofactor
from .errors import CodeRejected, PasswordRejected, PictureRejected
from .forms import CodeForm, LoginForm, PasswordChangeForm, ProfileForm, ReauthForm
from .signals import second_factor_verified

logger = logging.getLogger(__name__)

_NEXT_KEY = "accounts_next"
_SHOW_CODES_KEY = "accounts_show_backup_codes"
# The authenticator this session is enrolling: its secret is shown to this session only.
_PENDING_TOTP_KEY = "accounts_pending_totp_device"


def home_url() -> str:
    """The logged-in home page (the conversations home)."""
    try:
        return reverse("messaging:home")
    except NoReverseMatch:  # the messaging pages are not routed in this build
        return "/chats/"


def _safe_next(request: HttpRequest, candidate: str | None) -> str | None:
    if candidate and url_has_allowed_host_and_scheme(
        candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return candidate
    return None


def _after_verification(request: HttpRequest) -> HttpResponseRedirect:
    return HttpResponseRedirect(request.session.pop(_NEXT_KEY, None) or home_url())


def _posted(request: HttpRequest):
    """The form data of a POST, even an empty one (so it is validated and says what is
    missing); None for a GET."""
    return request.POST if request.method == "POST" else None


def _verified(request: HttpRequest) -> bool:
    return request.user.is_authenticated and request.user.is_verified()


def _log_in_with_second_factor(request: HttpRequest, device: Device) -> None:
    """Both factors passed: mark the session verified under a new session key.

    Whoever learned the key of the password-only session (a shared machine, a log, a
    planted cookie) must not share the verified session, as auth.login does for the
    password step; the session's record follows the new key so ending sessions finds it.
    """
    old_key = request.session.session_key
    otp_login(request, device)
    request.session.cycle_key()
    sessions.forget_session(session_key=old_key)
    sessions.remember_session(user=request.user, session_key=request.session.session_key)
    sessions.start_verified_session(request=request)


@never_cache
@require_http_methods(["GET", "POST"])
def login_view(request: HttpRequest) -> HttpResponse:
    next_url = _safe_next(request, request.POST.get("next") or request.GET.get("next"))
    if _verified(request) and request.method == "GET":
        return HttpResponseRedirect(next_url or home_url())
    form = LoginForm(_posted(request))
    status = 200
    if request.method == "POST":
        if form.is_valid():
            user = authenticate(
                request,
                username=form.cleaned_data["username"],
                password=form.cleaned_data["password"],
            )
            if user is not None and user.is_active:
                # Password accepted: the session is logged in but not verified; the
                # SecondFactorRequiredMiddleware keeps every page closed until it is.
                # (The same person, already verified, keeps their verified session.)
                stays_verified = _verified(request) and request.user.pk == user.pk
                auth_login(request, user)
                if not stays_verified:
                    sessions.limit_unverified_session(request=request)
                if next_url:
                    request.session[_NEXT_KEY] = next_url
                target = (
                    "accounts:verify" if twofactor.has_second_factor(user) else "accounts:enrol"
                )
                return HttpResponseRedirect(reverse(target))
            form.add_error(None, "Wrong username or password.")
        status = 400
    return render(request, "accounts/login.html", {"form": form, "next": next_url}, status=status)


@never_cache
@require_http_methods(["GET", "POST"])
def verify_view(request: HttpRequest) -> HttpResponse:
    if not request.user.is_authenticated:
        return HttpResponseRedirect(reverse("accounts:login"))
    if request.user.is_verified():
        return _after_verification(request)
    if not twofactor.has_second_factor(request.user):
        return HttpResponseRedirect(reverse("accounts:enrol"))
    form = CodeForm(_posted(request))
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                device = twofactor.verify_code(user=request.user, code=form.cleaned_data["code"])
            except CodeRejected as exc:
                form.add_error("code", exc.message)
            else:
                _log_in_with_second_factor(request, device)
                second_factor_verified.send(sender=None, request=request, user=request.user)
                if device.__class__.__name__ == "StaticDevice":
                    left = len(twofactor.backup_codes(request.user))
                    messages.warning(
                        request,
                        f"You used a backup code; {left} left. Make new ones on your profile page.",
                    )
                return _after_verification(request)
        status = 400
    return render(request, "accounts/verify.html", {"form": form}, status=status)


@never_cache
@require_http_methods(["GET", "POST"])
def enrol_view(request: HttpRequest) -> HttpResponse:
    if not request.user.is_authenticated:
        return HttpResponseRedirect(reverse("accounts:login"))
    if twofactor.has_second_factor(request.user):
        if request.user.is_verified():
            return HttpResponseRedirect(home_url())
        return HttpResponseRedirect(reverse("accounts:verify"))
    form = CodeForm(_posted(request))
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                device = twofactor.confirm_totp_device(
                    user=request.user,
                    device_id=request.session.get(_PENDING_TOTP_KEY),
                    code=form.cleaned_data["code"],
                )
            except CodeRejected as exc:
                form.add_error("code", exc.message)
            else:
                request.session.pop(_PENDING_TOTP_KEY, None)
                _log_in_with_second_factor(request, device)
                twofactor.create_backup_codes(user=request.user)
                request.session[_SHOW_CODES_KEY] = True
                second_factor_verified.send(sender=None, request=request, user=request.user)
                return HttpResponseRedirect(reverse("accounts:backup_codes"))
        status = 400
    device = twofactor.pending_totp_device(
        user=request.user, device_id=request.session.get(_PENDING_TOTP_KEY)
    )
    request.session[_PENDING_TOTP_KEY] = device.pk
    uri = twofactor.otpauth_uri(device)
    context = {
        "form": form,
        "secret": twofactor.secret_base32(device),
        "otpauth_uri": uri,
        "qr_data_uri": twofactor.qr_code_data_uri(uri),
    }
    return render(request, "accounts/enrol.html", context, status=status)


@never_cache
@require_http_methods(["GET", "POST"])
def backup_codes_view(request: HttpRequest) -> HttpResponse:
    # Bound on every POST, even an empty one, so missing fields get their messages.
    form = ReauthForm(request.POST if request.method == "POST" else None)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                twofactor.regenerate_backup_codes(
                    request=request,
                    user=request.user,
                    password=form.cleaned_data["password"],
                    code=form.cleaned_data["code"],
                )
            except PasswordRejected as exc:
                form.add_error("password", exc.message)
            except CodeRejected as exc:
                form.add_error("code", exc.message)
            else:
                request.session[_SHOW_CODES_KEY] = True
                messages.success(request, "New backup codes made; the old ones no longer work.")
                return HttpResponseRedirect(reverse("accounts:backup_codes"))
        status = 400
    # Codes are shown once, on the page after enrolment or after making new ones.
    show = request.method == "GET" and request.session.pop(_SHOW_CODES_KEY, False)
    codes = twofactor.backup_codes(request.user) if show else []
    context = {
        "form": form,
        "codes": codes,
        "shown": show,
        "left": len(codes) if show else len(twofactor.backup_codes(request.user)),
        "next_url": request.session.pop(_NEXT_KEY, None) or home_url(),
    }
    return render(request, "accounts/backup_codes.html", context, status=status)


@never_cache
@require_http_methods(["GET", "POST"])
def logout_view(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        return render(request, "accounts/logout.html")
    user = request.user if request.user.is_authenticated else None
    current = request.session.session_key
    logout(request)
    if user is not None:
        sessions.forget_session(session_key=current)
        sessions.end_sessions(user=user)
    messages.info(request, "You are logged out.")
    return HttpResponseRedirect(reverse("accounts:login"))


@never_cache
@require_http_methods(["GET", "POST"])
def profile_edit_view(request: HttpRequest) -> HttpResponse:
    profile = queries.own_profile(request.user)
    if request.method == "POST":
        form = ProfileForm(request.POST, request.FILES)
        if form.is_valid():
            data = form.cleaned_data
            try:
                services.update_profile(
                    user=request.user,
                    full_name=data["full_name"],
                    position=data["position"],
                    description=data["description"],
                    location=data["location"],
                    picture=data["picture"] or None,
                    remove_picture=data["remove_picture"],
                )
            except PictureRejected as exc:
                form.add_error("picture", exc.message)
            else:
                messages.success(request, "Your profile is saved.")
                return HttpResponseRedirect(reverse("accounts:profile_edit"))
        status = 400
    else:
        form = ProfileForm(
            initial={
                "full_name": profile.full_name,
                "position": profile.position,
                "location": profile.location,
                "description": profile.description,
            }
        )
        status = 200
    context = {
        "form": form,
        "profile": profile,
        "backup_codes_left": len(twofactor.backup_codes(request.user)),
    }
    return render(request, "accounts/profile_edit.html", context, status=status)


@never_cache
@require_http_methods(["GET", "POST"])
def password_change_view(request: HttpRequest) -> HttpResponse:
    form = PasswordChangeForm(request.user, _posted(request))
    status = 200
    if request.method == "POST":
        if form.is_valid():
            services.change_password(
                request=request, user=request.user, new_password=form.cleaned_data["new_password1"]
            )
            messages.success(
                request, "Your password is changed. Your other sessions are logged out."
            )
            return HttpResponseRedirect(reverse("accounts:profile_edit"))
        status = 400
    return render(request, "accounts/password_change.html", {"form": form}, status=status)


@require_http_methods(["GET", "HEAD"])
def picture_view(request: HttpRequest, username: str) -> HttpResponse:
    picture = queries.picture_of(username)
    if picture is None:
        raise Http404("No picture")
    try:
        size = picture.size
    except FileNotFoundError as exc:
        raise Http404("No picture") from exc
    # The same safe serving as attachments (messaging.views.file_view).
    return user_file_response(
        request,
        size=size,
        content_type=queries.picture_content_type(picture.name),
        read=lambda start, end: iter_open_file(picture.path, start, end),
    )
