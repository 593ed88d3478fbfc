"""The login server API through the Django test client, with real keys and signatures."""

import json
import re
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from nacl.signing import SigningKey

from loginserver import services
from loginserver.models import EnrolmentToken, Node, UserRecord
from peers import protocol

pytestmark = [pytest.mark.django_db, pytest.mark.urls("loginserver.urls")]

REPORT = "/api/v1/report"
DIRECTORY = "/api/v1/directory"


def enrol_body(key: SigningKey, token: str, name: str, url: str = "http://127.0.0.1:8101") -> bytes:
    proof = protocol.sign_enrolment(key, token=token, name=name, url=url)
    return json.dumps(
        {
            "token": token,
            "name": name,
            "url": url,
            "sign_key": protocol.b64e(bytes(key.verify_key)),
            "proof": protocol.b64e(proof),
        }
    ).encode()


def post_enrol(client, body: bytes):
    return client.post("/api/v1/enrol", data=body, content_type="application/json")


def make_node(client, name: str = "hq") -> SigningKey:
    key = SigningKey.generate()
    _, token = services.create_enrolment_token(node_name=name)
    assert post_enrol(client, enrol_body(key, token, name)).status_code == 201
    return key


def user_entry(username: str, status: str = "online", **overrides) -> dict:
    entry = {
        "username": username,
        "sign_key": protocol.b64e(bytes([1]) * 32),
        "box_key": protocol.b64e(bytes([2]) * 32),
        "full_name": username.title(),
        "position": "Director",
        "status": status,
        "last_seen": 1_700_000_000,
    }
    entry.update(overrides)
    return entry


def signed(client, key, node, method, path, body=b"", *, timestamp=None, nonce=None, **headers):
    auth = protocol.sign_request(
        key, node=node, method=method, path=path, body=body, timestamp=timestamp, nonce=nonce
    )
    if method == "POST":
        return client.post(
            path, data=body, content_type="application/json", HTTP_AUTHORIZATION=auth, **headers
        )
    return client.get(path, HTTP_AUTHORIZATION=auth, **headers)


def report(client, key, node, users, **kwargs):
    body = json.dumps({"users": users}).encode()
    return signed(client, key, node, "POST", REPORT, body, **kwargs)


def error_code(response) -> str:
    return response.json()["error"]["code"]


# --- enrolment ----------------------------------------------------------------------------
def test_it_enrols_a_node_and_returns_the_login_server_key(client):
    key = SigningKey.generate()
    _, token = services.create_enrolment_token(node_name="hq")
    response = post_enrol(client, enrol_body(key, token, "hq"))
    assert response.status_code == 201
    server_key = bytes(services.server_signing_key().verify_key)
    assert response.json()["login_server_key"] == protocol.b64e(server_key)
    assert response.json()["fingerprint"] == protocol.fingerprint(server_key)
    assert response.json()["node_fingerprint"] == protocol.fingerprint(bytes(key.verify_key))
    node = Node.objects.get(name="hq")
    assert bytes(node.sign_key) == bytes(key.verify_key)
    assert node.url == "http://127.0.0.1:8101"


def test_it_stores_only_a_hash_of_the_token():
    row, token = services.create_enrolment_token(node_name="hq")
    assert token not in row.token_hash
    assert not EnrolmentToken.objects.filter(token_hash=token).exists()


def test_the_printed_token_can_be_pasted_after_dash_dash_token():
    """A token starting with '-' would be read by argparse as an option and join_network fails."""
    out = StringIO()
    call_command("create_enrolment_token", "hq", stdout=out)
    token = out.getvalue().strip().splitlines()[-1]
    assert re.fullmatch(r"[0-9a-f]{64}", token)
    assert EnrolmentToken.objects.get(node_name="hq").token_hash != token


def test_a_reused_token_is_refused_and_changes_nothing(client):
    _, token = services.create_enrolment_token(node_name="hq")
    assert post_enrol(client, enrol_body(SigningKey.generate(), token, "hq")).status_code == 201
    response = post_enrol(client, enrol_body(SigningKey.generate(), token, "hq"))
    assert response.status_code == 403
    assert error_code(response) == "token_used"
    assert Node.objects.count() == 1


def test_an_expired_token_is_refused(client):
    row, token = services.create_enrolment_token(node_name="hq")
    EnrolmentToken.objects.filter(pk=row.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    response = post_enrol(client, enrol_body(SigningKey.generate(), token, "hq"))
    assert error_code(response) == "token_expired"
    assert not Node.objects.exists()


def test_an_unknown_token_is_refused(client):
    response = post_enrol(client, enrol_body(SigningKey.generate(), "not-a-token", "hq"))
    assert response.status_code == 403
    assert error_code(response) == "token_invalid"


def test_a_token_only_works_for_its_node_name(client):
    _, token = services.create_enrolment_token(node_name="hq")
    response = post_enrol(client, enrol_body(SigningKey.generate(), token, "branch"))
    assert error_code(response) == "token_name_mismatch"
    assert EnrolmentToken.objects.get().used_at is None


def test_an_enrolment_without_proof_of_the_key_is_refused(client):
    _, token = services.create_enrolment_token(node_name="hq")
    body = json.loads(enrol_body(SigningKey.generate(), token, "hq"))
    body["sign_key"] = protocol.b64e(bytes(SigningKey.generate().verify_key))
    response = post_enrol(client, json.dumps(body).encode())
    assert error_code(response) == "bad_proof"
    assert not Node.objects.exists()
    assert EnrolmentToken.objects.get().used_at is None


def test_in_production_a_node_must_enrol_with_an_https_url(client, settings):
    settings.PRODUCTION = True
    settings.ALLOW_PRIVATE_NODE_URLS = True  # no DNS here: the address check has its own tests
    _, token = services.create_enrolment_token(node_name="hq")
    plain = post_enrol(client, enrol_body(SigningKey.generate(), token, "hq"))
    assert (plain.status_code, error_code(plain)) == (400, "insecure_url")
    assert not Node.objects.exists()
    tls = enrol_body(SigningKey.generate(), token, "hq", url="https://hq.example.com")
    assert post_enrol(client, tls).status_code == 201


def test_a_second_node_with_a_taken_name_is_refused(client):
    _, first = services.create_enrolment_token(node_name="hq")
    _, second = services.create_enrolment_token(node_name="hq")
    assert post_enrol(client, enrol_body(SigningKey.generate(), first, "hq")).status_code == 201
    response = post_enrol(client, enrol_body(SigningKey.generate(), second, "hq"))
    assert response.status_code == 409
    assert error_code(response) == "node_exists"
    assert EnrolmentToken.objects.filter(used_at__isnull=True).count() == 1


def test_no_token_is_made_for_the_name_of_an_active_node(client):
    make_node(client, "hq")
    with pytest.raises(protocol.ProtocolError) as refused:
        services.create_enrolment_token(node_name="hq")
    assert refused.value.code == "node_exists"
    out = StringIO()
    with pytest.raises(CommandError, match="enrolled and active; revoke it first"):
        call_command("create_enrolment_token", "hq", stdout=out)


def test_a_revoked_office_can_join_again_under_its_name_with_a_new_key(client):
    old_key = make_node(client, "hq")
    assert report(client, old_key, "hq", [user_entry("alice")]).status_code == 200
    services.revoke_node(name="hq")

    new_key = make_node(client, "hq")

    node = Node.objects.get(name="hq")
    assert (node.active, node.revoked_at, bytes(node.sign_key)) == (
        True,
        None,
        bytes(new_key.verify_key),
    )
    assert not UserRecord.objects.exists()  # back with the first report of the new server
    refused = report(client, old_key, "hq", [user_entry("alice")])
    assert (refused.status_code, error_code(refused)) == (401, "bad_signature")
    assert report(client, new_key, "hq", [user_entry("alice")]).status_code == 200
    assert UserRecord.objects.get().username == "alice"


@pytest.mark.parametrize("name", ["Branch Office", "branch!", "", "-branch"])
def test_the_admin_token_form_explains_a_bad_node_name(name):
    from loginserver.admin import EnrolmentTokenForm

    form = EnrolmentTokenForm(data={"node_name": name})
    assert not form.is_valid()
    assert form.errors["node_name"]
    assert not EnrolmentToken.objects.exists()


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "malformed_json"),
        (b'{"token": "\xed\xa0\x80", "name": "hq"}', "malformed_json"),  # no 500
        (b"[]", "malformed_json"),
        (b'{"name": "hq"}', "missing_field"),
        (
            b'{"name": "HQ!", "url": "http://x", "sign_key": "", "proof": "", "token": "t"}',
            "invalid_field",
        ),
        (
            b'{"name": "hq", "url": "ftp://x", "sign_key": "", "proof": "", "token": "t"}',
            "invalid_field",
        ),
        (
            b'{"name": "hq", "url": "http://x", "sign_key": 5, "proof": "", "token": "t"}',
            "invalid_field",
        ),
        (
            b'{"name": "hq", "url": "http://[::1", "sign_key": "", "proof": "", "token": "t"}',
            "invalid_field",
        ),
        (
            b'{"name": "hq", "url": "http://x\\ty", "sign_key": "", "proof": "", "token": "t"}',
            "invalid_field",
        ),
        (
            b'{"name": "hq\\n", "url": "http://x", "sign_key": "", "proof": "", "token": "t"}',
            "invalid_field",
        ),
    ],
)
def test_a_malformed_enrolment_is_refused_with_a_code(client, body, code):
    response = post_enrol(client, body)
    assert response.status_code == 400
    assert error_code(response) == code


def test_an_oversized_enrolment_body_is_refused(client, settings):
    settings.ENROL_MAX_BODY_BYTES = 100
    response = post_enrol(client, b"{" + b" " * 200 + b"}")
    assert response.status_code == 413
    assert error_code(response) == "body_too_large"


# --- reports --------------------------------------------------------------------------
def test_it_stores_reported_users_with_records_signed_by_the_login_server(client):
    key = make_node(client)
    response = report(client, key, "hq", [user_entry("alice"), user_entry("bob", "away")])
    assert response.status_code == 200
    assert response.json()["signed"] == 2
    row = UserRecord.objects.get(username="alice")
    server_key = bytes(services.server_signing_key().verify_key)
    record = protocol.verify_user_record(server_key, bytes(row.record), bytes(row.record_sig))
    assert (record.username, record.node, record.node_url) == (
        "alice",
        "hq",
        "http://127.0.0.1:8101",
    )
    assert record.sign_key == bytes([1]) * 32
    assert UserRecord.objects.get(username="bob").status == "away"


def test_an_unchanged_report_signs_nothing_again(client):
    key = make_node(client)
    report(client, key, "hq", [user_entry("alice")])
    before = bytes(UserRecord.objects.get().record)
    response = report(client, key, "hq", [user_entry("alice")])
    assert response.json()["signed"] == 0
    assert bytes(UserRecord.objects.get().record) == before


def test_a_key_change_signs_a_new_record(client):
    key = make_node(client)
    report(client, key, "hq", [user_entry("alice")])
    new_key = protocol.b64e(bytes([9]) * 32)
    response = report(client, key, "hq", [user_entry("alice", sign_key=new_key)])
    assert response.json()["signed"] == 1
    assert bytes(UserRecord.objects.get().sign_key) == bytes([9]) * 32


def test_a_user_missing_from_the_report_leaves_the_directory(client):
    key = make_node(client)
    report(client, key, "hq", [user_entry("alice"), user_entry("bob")])
    response = report(client, key, "hq", [user_entry("alice")])
    assert response.json()["removed"] == 1
    listed = UserRecord.objects.filter(listed=True).values_list("username", flat=True)
    assert list(listed) == ["alice"]  # bob's name stays hq's, unlisted


def test_a_node_cannot_claim_another_nodes_user_and_the_rest_is_stored(client):
    hq = make_node(client, "hq")
    branch = make_node(client, "branch")
    report(client, hq, "hq", [user_entry("alice")])
    response = report(client, branch, "branch", [user_entry("carol"), user_entry("alice")])
    assert response.status_code == 200
    assert response.json()["refused"] == [{"username": "alice", "code": "user_owned_by_other_node"}]
    assert UserRecord.objects.get(username="carol").node.name == "branch"
    assert UserRecord.objects.get(username="alice").node.name == "hq"


def test_a_forged_signature_is_refused(client):
    make_node(client)
    response = report(client, SigningKey.generate(), "hq", [user_entry("alice")])
    assert response.status_code == 401
    assert error_code(response) == "bad_signature"
    assert not UserRecord.objects.exists()


def test_a_replayed_nonce_is_refused(client):
    key = make_node(client)
    nonce = "ab" * 16
    assert report(client, key, "hq", [user_entry("alice")], nonce=nonce).status_code == 200
    response = report(client, key, "hq", [user_entry("alice", "offline")], nonce=nonce)
    assert error_code(response) == "replayed_nonce"
    assert UserRecord.objects.get().status == "online"


def test_a_stale_timestamp_is_refused(client):
    key = make_node(client)
    old = int(timezone.now().timestamp()) - 301
    response = report(client, key, "hq", [user_entry("alice")], timestamp=old)
    assert error_code(response) == "stale_timestamp"
    assert not UserRecord.objects.exists()


def test_an_unsigned_report_is_refused(client):
    make_node(client)
    response = client.post(REPORT, data=b'{"users": []}', content_type="application/json")
    assert response.status_code == 401
    assert error_code(response) == "missing_signature"


def test_an_unknown_node_is_refused(client):
    response = report(client, SigningKey.generate(), "ghost", [user_entry("alice")])
    assert response.status_code == 403
    assert error_code(response) == "unknown_node"


def test_a_revoked_node_is_refused(client):
    key = make_node(client)
    services.revoke_node(name="hq")
    response = report(client, key, "hq", [user_entry("alice")])
    assert response.status_code == 403
    assert error_code(response) == "node_revoked"
    assert not UserRecord.objects.exists()


@pytest.mark.parametrize(
    ("users", "code"),
    [
        ("alice", "invalid_field"),
        (["alice"], "invalid_field"),
        ([{"username": "alice"}], "missing_field"),
        ([user_entry("alice", status="busy")], "invalid_field"),
        ([user_entry("alice", sign_key="short")], "invalid_field"),
        ([user_entry("alice", last_seen="yesterday")], "invalid_field"),
        ([user_entry("alice", full_name="x" * 151)], "invalid_field"),
        ([user_entry("alice", full_name="M\x00")], "invalid_field"),  # PostgreSQL refuses NUL
        ([user_entry("alice", position="CEO\nCFO")], "invalid_field"),
        ([user_entry("al ice")], "invalid_field"),
        ([user_entry("alice\n")], "invalid_field"),  # a look-alike of "alice"
        ([user_entry("alice", status="away", last_seen=10**12)], "invalid_field"),  # year 33658
        ([user_entry("alice", status="away", last_seen=2**64)], "invalid_field"),
        ([user_entry("alice"), user_entry("alice")], "duplicate_user"),
    ],
)
def test_a_malformed_report_is_refused_and_changes_nothing(client, users, code):
    key = make_node(client)
    response = report(client, key, "hq", users)
    assert response.status_code == 400
    assert error_code(response) == code
    assert not UserRecord.objects.exists()


def test_a_report_that_is_not_json_is_refused(client):
    key = make_node(client)
    response = signed(client, key, "hq", "POST", REPORT, b"\xff\xfe")
    assert error_code(response) == "malformed_json"


def test_an_oversized_report_is_refused(client, settings):
    key = make_node(client)
    settings.PEER_MAX_BODY_BYTES = 1000
    response = report(client, key, "hq", [user_entry(f"user{i}") for i in range(20)])
    assert response.status_code == 413
    assert not UserRecord.objects.exists()


def test_a_get_on_the_report_endpoint_is_refused(client):
    response = client.get(REPORT)
    assert response.status_code == 405


# --- directory ------------------------------------------------------------------------
def fetch(client, key, node="hq", **headers):
    return signed(client, key, node, "GET", DIRECTORY, **headers)


def test_the_directory_is_signed_and_every_record_verifies(client):
    key = make_node(client)
    report(client, key, "hq", [user_entry("alice")])
    response = fetch(client, key)
    assert response.status_code == 200
    server_key = bytes(services.server_signing_key().verify_key)
    signature = protocol.b64d(response["X-P2P-Signature"], field="sig")
    protocol.verify_directory(server_key, response.content, signature)
    body = json.loads(response.content)
    assert [n["name"] for n in body["nodes"]] == ["hq"]
    assert body["nodes"][0]["online"] is True
    (user,) = body["users"]
    record = protocol.verify_user_record(
        server_key, protocol.b64d(user["record"], field="r"), protocol.b64d(user["sig"], field="s")
    )
    assert record.username == "alice"
    assert user["status"] == "online"


def test_an_unchanged_directory_answers_304_without_a_body(client):
    key = make_node(client)
    report(client, key, "hq", [user_entry("alice")])
    etag = fetch(client, key)["ETag"]
    response = fetch(client, key, HTTP_IF_NONE_MATCH=etag)
    assert response.status_code == 304
    assert response.content == b""


def test_a_presence_change_changes_the_etag(client):
    key = make_node(client)
    report(client, key, "hq", [user_entry("alice")])
    etag = fetch(client, key)["ETag"]
    report(client, key, "hq", [user_entry("alice", "away")])
    response = fetch(client, key, HTTP_IF_NONE_MATCH=etag)
    assert response.status_code == 200
    assert json.loads(response.content)["users"][0]["status"] == "away"


def test_the_users_of_a_node_that_stopped_reporting_are_offline(client):
    hq = make_node(client, "hq")
    branch = make_node(client, "branch")
    report(client, hq, "hq", [user_entry("alice")])
    report(client, branch, "branch", [user_entry("carol")])
    long_ago = timezone.now() - timedelta(hours=1)
    Node.objects.filter(name="hq").update(last_report_at=long_ago)
    services.bump_directory_version()
    body = json.loads(fetch(client, branch, "branch").content)
    statuses = {u["status"] for u in body["users"]}
    assert {n["name"]: n["online"] for n in body["nodes"]} == {"hq": False, "branch": True}
    assert statuses == {"offline", "online"}


def test_a_revoked_node_and_its_users_leave_the_directory(client):
    hq = make_node(client, "hq")
    branch = make_node(client, "branch")
    report(client, hq, "hq", [user_entry("alice")])
    services.revoke_node(name="hq")
    body = json.loads(fetch(client, branch, "branch").content)
    assert [n["name"] for n in body["nodes"]] == ["branch"]
    assert body["users"] == []


def test_a_revoked_node_cannot_fetch_the_directory(client):
    key = make_node(client)
    services.revoke_node(name="hq")
    assert error_code(fetch(client, key)) == "node_revoked"


def test_an_unsigned_directory_request_is_refused(client):
    response = client.get(DIRECTORY)
    assert response.status_code == 401
