"""People get readable error pages; peers get JSON."""

import pytest
from django.test import Client

from tests.helpers.factories import DEFAULT_PASSWORD, code_at_step, make_person

pytestmark = pytest.mark.django_db


def _logged_in() -> Client:
    import time

    _, secret = make_person("alice")
    client = Client()
    client.post("/login/", {"username": "alice", "password": DEFAULT_PASSWORD})
    client.post("/login/code/", {"code": code_at_step(secret, int(time.time() // 30))})
    return client


def test_an_unknown_page_is_a_readable_404_page():
    response = _logged_in().get("/no/such/page/")
    assert response.status_code == 404
    text = response.content.decode()
    assert "<h1>Not found</h1>" in text
    assert "Back to the people of the network" in text


def test_an_unknown_person_is_a_readable_404_page():
    response = _logged_in().get("/people/nobody-here/")
    assert response.status_code == 404
    assert "<h1>Not found</h1>" in response.content.decode()


def test_a_peer_posting_garbage_to_the_inbox_gets_json_not_html():
    response = Client().post("/api/v1/inbox", data=b"\xff\x00", content_type="application/json")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "missing_signature"


def test_an_unknown_api_path_is_a_typed_json_404_for_peers():
    response = Client().get("/api/v2/inbox")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("path", ["/health", "/health/live"])
def test_health_answers_405_to_a_post_not_a_csrf_page(path):
    response = Client(enforce_csrf_checks=True).post(path)
    assert response.status_code == 405


@pytest.mark.parametrize(
    ("path", "limit_setting"),
    [
        ("/api/v1/enrol", "ENROL_MAX_BODY_BYTES"),
        ("/api/v1/inbox", "PEER_MAX_BODY_BYTES"),
        ("/login/", "DATA_UPLOAD_MAX_MEMORY_SIZE"),
    ],
)
def test_each_path_takes_a_body_only_as_large_as_it_needs(path, limit_setting):
    from django.conf import settings

    from p2psocial.asgi import BodyLimit

    assert BodyLimit.limit_for(path) == getattr(settings, limit_setting)
    assert BodyLimit.limit_for("/profile/") > settings.PROFILE_PICTURE_MAX_BYTES


@pytest.mark.parametrize("cookie", [None, b"csrftoken=abc", b"sessionid="])
def test_an_upload_without_a_session_is_refused_before_its_body_is_read(cookie):
    """Django reads a whole body before any view runs: 100 MB from nobody never is."""
    import asyncio

    from p2psocial.asgi import application

    read, sent = [], []

    async def receive():
        read.append(True)
        return {"type": "http.request", "body": b"x" * 10, "more_body": False}

    async def send(message):
        sent.append(message)

    headers = [(b"host", b"127.0.0.1"), (b"content-length", b"10")]
    if cookie is not None:
        headers.append((b"cookie", cookie))
    scope = {"type": "http", "method": "POST", "path": "/chat/bob/files/", "headers": headers}

    asyncio.run(application(scope, receive, send))

    assert sent[0]["status"] == 401
    assert b"login_required" in sent[1]["body"]
    assert read == []
