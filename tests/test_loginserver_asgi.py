"""The node API's own ASGI door (loginserver.asgi): report and directory answered without
Django's handler, everything else passed to Django unchanged."""

import asyncio
import json

import pytest
from nacl.signing import SigningKey

from loginserver import services
from loginserver.asgi import NodeApi
from loginserver.models import UserRecord
from peers import protocol

# The door answers from its own thread and connection: the rows must be committed.
pytestmark = pytest.mark.django_db(transaction=True)

REPORT = "/api/v1/report"
DIRECTORY = "/api/v1/directory"


class Django:
    """Stands in for Django's ASGI app and records what reached it."""

    def __init__(self):
        self.paths: list[str] = []

    async def __call__(self, scope, receive, send):
        self.paths.append(scope["path"])
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def call(app, method, path, body=b"", *, headers=(), query=b"", host=b"127.0.0.1"):
    """(status, headers, body) of one request through the ASGI app."""
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": query,
        "headers": [(b"host", host), *headers],
        "client": ("127.0.0.1", 50000),
    }
    incoming = [{"type": "http.request", "body": body, "more_body": False}]
    sent = []

    async def receive():
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start, body_message = sent
    return start["status"], dict(start["headers"]), body_message["body"]


def enrol(name: str = "hq") -> SigningKey:
    key = SigningKey.generate()
    url = "http://127.0.0.1:8101"
    _, token = services.create_enrolment_token(node_name=name)
    proof = protocol.sign_enrolment(key, token=token, name=name, url=url)
    services.enrol_node(
        token=token, name=name, url=url, sign_key=bytes(key.verify_key), proof=proof
    )
    return key


def auth(key, method, path, body=b"", node="hq") -> tuple[bytes, bytes]:
    value = protocol.sign_request(key, node=node, method=method, path=path, body=body)
    return (b"authorization", value.encode())


def report_body(status: str = "online") -> bytes:
    user = {
        "username": "alice",
        "sign_key": protocol.b64e(bytes([1]) * 32),
        "box_key": protocol.b64e(bytes([2]) * 32),
        "full_name": "Alice",
        "position": "Director",
        "status": status,
        "last_seen": 1_700_000_000,
    }
    return json.dumps({"users": [user]}).encode()


def test_a_signed_report_is_stored_and_answered_without_django():
    key, django = enrol(), Django()
    body = report_body()
    status, _, answer = call(
        NodeApi(django), "POST", REPORT, body, headers=[auth(key, "POST", REPORT, body)]
    )
    assert (status, json.loads(answer)["signed"]) == (200, 1)
    assert UserRecord.objects.get().username == "alice"
    assert django.paths == []


def test_a_replayed_report_is_refused_and_stores_nothing_new():
    key, app = enrol(), NodeApi(Django())
    body = report_body()
    header = auth(key, "POST", REPORT, body)
    call(app, "POST", REPORT, body, headers=[header])
    status, _, answer = call(app, "POST", REPORT, report_body("away"), headers=[header])
    assert (status, json.loads(answer)["error"]["code"]) == (401, "bad_signature")
    status, _, answer = call(app, "POST", REPORT, body, headers=[header])
    assert (status, json.loads(answer)["error"]["code"]) == (401, "replayed_nonce")
    assert UserRecord.objects.get().status == "online"


def test_an_unsigned_report_is_refused():
    status, _, answer = call(NodeApi(Django()), "POST", REPORT, report_body())
    assert (status, json.loads(answer)["error"]["code"]) == (401, "missing_signature")


def test_an_unchanged_directory_is_answered_304():
    key, app = enrol(), NodeApi(Django())
    status, headers, _ = call(app, "GET", DIRECTORY, headers=[auth(key, "GET", DIRECTORY)])
    assert status == 200
    etag = headers[b"etag"]
    status, _, answer = call(
        app, "GET", DIRECTORY, headers=[auth(key, "GET", DIRECTORY), (b"if-none-match", etag)]
    )
    assert (status, answer) == (304, b"")


def test_an_oversized_report_is_refused_with_413(settings):
    settings.PEER_MAX_BODY_BYTES = 100
    body = b"{" + b" " * 200 + b"}"
    status, _, answer = call(NodeApi(Django()), "POST", REPORT, body)
    assert (status, json.loads(answer)["error"]["code"]) == (413, "body_too_large")


def test_the_answer_carries_the_request_id_and_the_security_headers():
    _, headers, _ = call(
        NodeApi(Django()), "POST", REPORT, report_body(), headers=[(b"x-request-id", b"abc-1")]
    )
    assert headers[b"x-request-id"] == b"abc-1"
    assert headers[b"x-content-type-options"] == b"nosniff"
    assert headers[b"x-frame-options"] == b"DENY"
    assert b"content-security-policy" in headers


@pytest.mark.parametrize(
    ("method", "path", "query", "host"),
    [
        ("GET", REPORT, b"", b"127.0.0.1"),  # wrong method: Django's 405
        ("POST", "/api/v1/rotate-key", b"", b"127.0.0.1"),
        ("GET", DIRECTORY, b"x=1", b"127.0.0.1"),  # a query string is signed: Django checks it
        ("GET", DIRECTORY, b"", b"evil.example"),  # Django refuses a Host it does not serve
    ],
)
def test_every_other_request_goes_to_django(method, path, query, host):
    django = Django()
    status, _, _ = call(NodeApi(django), method, path, query=query, host=host)
    assert (status, django.paths) == (299, [path])
