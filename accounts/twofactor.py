"""Second factor: authenticator (TOTP) enrolment and verification, and single-use backup codes.

Every write about devices lives here; views only call these functions.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import re
from datetime import timedelta
from urllib.parse import quote

import qrcode
from django.conf import settings
from django.contrib.auth import authenticate
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone
from django_otp.models import Device, VerifyNotAllowed
from django_otp.oath import hotp
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from .errors import CodeRejected, PasswordRejected
from .models import User

logger = logging.getLogger(__name__)

BACKUP_CODE_COUNT = 10
TOTP_DEVICE_NAME = "authenticator"
BACKUP_DEVICE_NAME = "backup codes"

_TOTP_CODE = re.compile(r"[0-9]{6}")
_BACKUP_CODE = re.compile(r"[a-z2-7]{8}")


def normalise_code(code: str) -> str:
    """What a person typed, without spaces and dashes, lower case (backup codes are base32)."""
    return re.sub(r"[\s-]", "", code or "").lower()


def confirmed_totp_device(user: User) -> TOTPDevice | None:
    return TOTPDevice.objects.filter(user=user, confirmed=True).order_by("id").first()


def has_second_factor(user: User) -> bool:
    """True once the person has confirmed an authenticator app."""
    return TOTPDevice.objects.filter(user=user, confirmed=True).exists()


def secret_base32(device: TOTPDevice) -> str:
    return base64.b32encode(device.bin_key).decode("ascii").rstrip("=")


def otpauth_uri(device: TOTPDevice) -> str:
    """The key URI authenticator apps read from the QR code."""
    issuer = settings.OTP_TOTP_ISSUER
    label = quote(f"{issuer}:{device.user.get_username()}", safe=":@")
    return (
        f"otpauth://totp/{label}?secret={secret_base32(device)}"
        f"&issuer={quote(issuer)}&algorithm=SHA1&digits={device.digits}&period={device.step}"
    )


def qr_code_data_uri(text: str) -> str:
    """A PNG QR code as a data: URI (allowed by the CSP's img-src), made on this node."""
    image = qrcode.make(text, box_size=6, border=3)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def pending_totp_device(*, user: User, device_id: int | None) -> TOTPDevice:
    """The unconfirmed authenticator one session is enrolling: device_id, which that session
    keeps, or a new device when it has none (yet, or any more).

    Never another session's device: whoever else knows the password starts their own, so
    the secret a session shows is one only that session has shown.
    """
    with transaction.atomic():
        device = None
        if device_id is not None:
            device = TOTPDevice.objects.filter(pk=device_id, user=user, confirmed=False).first()
        if device is None:
            # An unverified session ends UNVERIFIED_SESSION_S after login, so older pending
            # devices belong to sessions that are over.
            cutoff = timezone.now() - timedelta(seconds=settings.UNVERIFIED_SESSION_S)
            TOTPDevice.objects.filter(user=user, confirmed=False, created_at__lt=cutoff).delete()
            device = TOTPDevice.objects.create(user=user, name=TOTP_DEVICE_NAME, confirmed=False)
    return device


def add_totp_device(*, user: User, secret_b32: str) -> TOTPDevice:
    """A confirmed authenticator with a known secret (scripts and the demo); replaces others."""
    cleaned = secret_b32.strip().replace(" ", "").upper()
    try:
        key = base64.b32decode(cleaned + "=" * (-len(cleaned) % 8))
    except (binascii.Error, ValueError) as exc:
        raise CodeRejected("The TOTP secret is not valid base32.", code="invalid_secret") from exc
    if len(key) < 10:
        raise CodeRejected(
            "The TOTP secret must be at least 16 base32 characters.", code="weak_secret"
        )
    with transaction.atomic():
        TOTPDevice.objects.filter(user=user).delete()
        return TOTPDevice.objects.create(
            user=user, name=TOTP_DEVICE_NAME, key=key.hex(), confirmed=True
        )


def _check_allowed(device: Device) -> None:
    allowed, extra = device.verify_is_allowed()
    if allowed:
        return
    extra = extra or {}
    if extra.get("reason") == VerifyNotAllowed.N_FAILED_ATTEMPTS:
        locked_until = extra.get("locked_until")
        wait_s = 1
        if locked_until is not None:
            wait_s = max(1, int((locked_until - timezone.now()).total_seconds() + 0.999))
        raise CodeRejected(
            f"Too many wrong codes in a row. Wait {wait_s} second{'s' if wait_s != 1 else ''} "
            "and try again.",
            code="throttled",
        )
    raise CodeRejected("Code verification is disabled for now.", code="not_allowed")


def _was_already_used(device: TOTPDevice, token: str) -> bool:
    """Whether `token` is the code of a time step this device has already accepted."""
    if device.last_t < 0:
        return False
    first = max(0, device.last_t - device.tolerance)
    return any(
        hotp(device.bin_key, t, digits=device.digits) == int(token)
        for t in range(first, device.last_t + 1)
    )


def _reused_or_wrong(device: TOTPDevice, token: str) -> CodeRejected:
    if _was_already_used(device, token):
        return CodeRejected(
            "That code was already used. Wait for the next code in your authenticator app.",
            code="reused_code",
        )
    return CodeRejected()


def confirm_totp_device(*, user: User, device_id: int | None, code: str) -> TOTPDevice:
    """Confirm the pending authenticator device_id (the one this session showed) with a code
    it produced; every other authenticator of the person is deleted. Raises CodeRejected."""
    token = normalise_code(code)
    if not _TOTP_CODE.fullmatch(token):
        raise CodeRejected(
            "Enter the 6-digit code your authenticator app shows.", code="bad_format"
        )
    # Errors are raised after the transaction so that a failure (and its throttling) is kept.
    with transaction.atomic():
        # One enrolment at a time per person: two sessions confirming their own devices at
        # once must not each keep theirs (nor deadlock deleting each other's).
        User.objects.select_for_update().filter(pk=user.pk).first()
        if has_second_factor(user):
            raise CodeRejected("Your authenticator app is already set up.", code="enrolled")
        device = None
        if device_id is not None:
            device = (
                TOTPDevice.objects.select_for_update()
                .filter(pk=device_id, user=user, confirmed=False)
                .first()
            )
        if device is None:
            raise CodeRejected("Start the set-up again.", code="no_pending_device")
        _check_allowed(device)
        accepted = device.verify_token(token)
        if accepted:
            device.confirmed = True
            device.save(update_fields=["confirmed"])
            TOTPDevice.objects.filter(user=user).exclude(pk=device.pk).delete()
    if not accepted:
        raise _reused_or_wrong(device, token)
    logger.info("authenticator enrolled", extra={"user_id": user.pk})
    return device


def _verify_totp_token(*, user: User, token: str) -> TOTPDevice:
    device = confirmed_totp_device(user)
    if device is None:
        raise CodeRejected("Set up your authenticator app first.", code="no_device")
    # Errors are raised after the transaction so that a failure (and its throttling) is kept.
    with transaction.atomic():
        device = TOTPDevice.objects.select_for_update().get(pk=device.pk)
        _check_allowed(device)
        accepted = device.verify_token(token)
    if not accepted:
        logger.info("second factor refused", extra={"user_id": user.pk, "kind": "totp"})
        raise _reused_or_wrong(device, token)
    return device


def verify_totp_code(*, user: User, code: str) -> TOTPDevice:
    """Check a 6-digit authenticator code only, never a backup code; returns the authenticator.

    Raises CodeRejected with code bad_format, backup_code_not_allowed, wrong_code, reused_code,
    throttled or no_device.
    """
    token = normalise_code(code)
    if _TOTP_CODE.fullmatch(token):
        return _verify_totp_token(user=user, token=token)
    if _BACKUP_CODE.fullmatch(token):
        raise CodeRejected(
            "A backup code does not work here. Enter the 6-digit code your authenticator app "
            "shows.",
            code="backup_code_not_allowed",
        )
    raise CodeRejected("Enter the 6-digit code your authenticator app shows.", code="bad_format")


def verify_code(*, user: User, code: str) -> Device:
    """Check a 6-digit authenticator code or a backup code; returns the device that accepted it.

    Raises CodeRejected with code bad_format, wrong_code, reused_code, throttled or no_device.
    """
    token = normalise_code(code)
    if _TOTP_CODE.fullmatch(token):
        return _verify_totp_token(user=user, token=token)
    if _BACKUP_CODE.fullmatch(token):
        device = StaticDevice.objects.filter(user=user, confirmed=True).order_by("id").first()
        if device is None:
            raise CodeRejected("You have no backup codes.", code="no_device")
        with transaction.atomic():
            device = StaticDevice.objects.select_for_update().get(pk=device.pk)
            _check_allowed(device)
            accepted = device.verify_token(token)  # deletes the token: single use
        if not accepted:
            logger.info("second factor refused", extra={"user_id": user.pk, "kind": "backup"})
            raise CodeRejected(
                "That backup code is not right or was already used.", code="wrong_backup_code"
            )
        return device
    raise CodeRejected(
        "Enter the 6-digit code from your authenticator app, or one of your backup codes.",
        code="bad_format",
    )


def create_backup_codes(*, user: User) -> list[str]:
    """Replace the person's backup codes with BACKUP_CODE_COUNT new single-use ones."""
    with transaction.atomic():
        device, _ = StaticDevice.objects.get_or_create(
            user=user, name=BACKUP_DEVICE_NAME, defaults={"confirmed": True}
        )
        StaticDevice.objects.filter(user=user).exclude(pk=device.pk).delete()
        device.token_set.all().delete()
        device.throttle_reset(commit=False)
        device.confirmed = True
        device.save()
        codes = [StaticToken.random_token() for _ in range(BACKUP_CODE_COUNT)]
        StaticToken.objects.bulk_create(StaticToken(device=device, token=c) for c in codes)
    logger.info("backup codes created", extra={"user_id": user.pk, "count": len(codes)})
    return codes


def regenerate_backup_codes(
    *, request: HttpRequest, user: User, password: str, code: str
) -> list[str]:
    """Replace the backup codes once the person has typed their password and an authenticator code.

    A session alone is not enough: backup codes bypass the authenticator for good. A wrong
    password counts toward the login lockout (django-axes). Raises PasswordRejected or
    CodeRejected before anything changes.
    """
    confirmed = authenticate(request, username=user.get_username(), password=password)
    if confirmed is None or confirmed.pk != user.pk:
        logger.info("re-authentication refused", extra={"user_id": user.pk, "step": "password"})
        raise PasswordRejected()
    verify_totp_code(user=user, code=code)
    return create_backup_codes(user=user)


def backup_codes(user: User) -> list[str]:
    return list(
        StaticToken.objects.filter(device__user=user, device__confirmed=True)
        .order_by("id")
        .values_list("token", flat=True)
    )


def reset_second_factor(*, user: User) -> None:
    """Delete the person's authenticator and backup codes: the next login enrols again."""
    with transaction.atomic():
        TOTPDevice.objects.filter(user=user).delete()
        StaticDevice.objects.filter(user=user).delete()
    logger.info("second factor reset", extra={"user_id": user.pk})
