"""Logging a person in through the Django test client, step by step."""

from __future__ import annotations

import base64
import time

from django.test import Client
from django_otp.plugins.otp_totp.models import TOTPDevice

from tests.helpers.factories import DEFAULT_PASSWORD, code_at_step


def step_now() -> int:
    """The current 30-second TOTP time step."""
    return int(time.time() // 30)


def post_password(client: Client, username: str, password: str = DEFAULT_PASSWORD):
    return client.post("/login/", {"username": username, "password": password})


def pending_secret(username: str) -> str:
    """The secret of the authenticator being enrolled, as the page shows it (base32)."""
    device = TOTPDevice.objects.get(user__username=username)
    return base64.b32encode(device.bin_key).decode().rstrip("=")


def logged_in(client: Client, username: str, secret: str, step: int | None = None) -> Client:
    """client with a verified session: password, then the code of step (default now)."""
    post_password(client, username)
    response = client.post("/login/code/", {"code": code_at_step(secret, step or step_now())})
    assert response.status_code == 302, response.content
    return client


def admin_logged_in(client: Client, username: str, secret: str) -> Client:
    """client logged in to the admin site: password and an authenticator code, one form."""
    response = client.post(
        "/admin/login/?next=/admin/",
        {
            "username": username,
            "password": DEFAULT_PASSWORD,
            "otp_token": code_at_step(secret, step_now()),
            "next": "/admin/",
        },
    )
    assert response.status_code == 302, response.content
    return client
