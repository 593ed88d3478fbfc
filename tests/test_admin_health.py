"""Staff see the health figures on an admin page; nobody else does."""

import time

import pytest
from django.test import Client

from tests.helpers.factories import DEFAULT_PASSWORD, code_at_step, make_person

pytestmark = pytest.mark.django_db


def _admin_client(username: str, secret: str) -> Client:
    client = Client()
    response = client.post(
        "/admin/login/?next=/admin/",
        {
            "username": username,
            "password": DEFAULT_PASSWORD,
            "otp_token": code_at_step(secret, int(time.time() // 30)),
            "next": "/admin/",
        },
    )
    assert response.status_code == 302
    return client


def test_it_shows_the_health_figures_to_verified_staff():
    _, secret = make_person("root", staff=True)
    client = _admin_client("root", secret)

    index = client.get("/admin/").content.decode()
    page = client.get("/admin/health/")

    assert "/admin/health/" in index
    assert page.status_code == 200
    text = page.content.decode()
    for figure in ("database", "redis", "worker_heartbeat_age_s", "outbox_queued", "login_server"):
        assert figure in text


def test_it_sends_anonymous_visitors_to_the_admin_login():
    response = Client().get("/admin/health/")
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]
