"""Hardening of the login server: usernames stay with the node that claimed them, a small
enrolment body limit, node URLs at public addresses in production, and a signed 304."""

from __future__ import annotations

import json
import socket
import threading
from io import StringIO

import pytest
from django.contrib.auth.models import Group
from django.contrib.messages.storage.cookie import CookieStorage
from django.core.management import CommandError, call_command
from django.test import RequestFactory
from nacl.signing import SigningKey

from accounts import roles
from accounts.admin_site import admin_site
from loginserver import services
from loginserver.admin import UserRecordAdmin
from loginserver.asgi import NodeApi
from loginserver.models import EnrolmentToken, Node, UserRecord
from peers import protocol
from tests.helpers.factories import make_person
from tests.test_loginserver_api import (
    DIRECTORY,
    REPORT,
    enrol_body,
    error_code,
    fetch,
    make_node,
    post_enrol,
    report,
    signed,
    user_entry,
)
from tests.test_loginserver_asgi import Django, auth, call, enrol

pytestmark = [pytest.mark.django_db, pytest.mark.urls("loginserver.urls")]


def listed(client, key, node: str = "hq") -> dict[str, str]:
    """username -> node of every user record in the directory, as a node fetches it."""
    body = json.loads(fetch(client, key, node).content)
    records = [json.loads(protocol.b64d(u["record"], field="record")) for u in body["users"]]
    return {r["username"]: r["node"] for r in records}


# --- 1. a username stays with the node that claimed it -------------------------------------
def test_a_name_left_out_of_a_report_stays_reserved_to_its_node(client):
    hq, branch = make_node(client, "hq"), make_node(client, "branch")
    report(client, hq, "hq", [user_entry("alice")])
    assert report(client, hq, "hq", []).json()["removed"] == 1

    claim = report(
        client, branch, "branch", [user_entry("alice", sign_key=protocol.b64e(b"\7" * 32))]
    )

    assert claim.status_code == 200
    assert claim.json()["refused"] == [{"username": "alice", "code": "user_owned_by_other_node"}]
    record = UserRecord.objects.get(username="alice")
    assert (record.node.name, record.listed, bytes(record.sign_key)) == ("hq", False, b"\1" * 32)
    assert listed(client, branch, "branch") == {}


def test_the_owner_reporting_a_reserved_name_again_lists_it_again(client):
    hq, branch = make_node(client, "hq"), make_node(client, "branch")
    report(client, hq, "hq", [user_entry("alice")])
    report(client, hq, "hq", [])
    report(client, branch, "branch", [user_entry("alice")])

    again = report(client, hq, "hq", [user_entry("alice")])

    assert (again.status_code, again.json()["refused"], again.json()["signed"]) == (200, [], 1)
    assert listed(client, branch, "branch") == {"alice": "hq"}


def test_a_name_held_by_another_node_is_refused_alone_and_the_rest_is_stored(client):
    """Two offices chose one name: the second keeps reporting all its other people."""
    hq, branch = make_node(client, "hq"), make_node(client, "branch")
    report(client, branch, "branch", [user_entry("dave")])

    response = report(client, hq, "hq", [user_entry("alice"), user_entry("dave", "away")])

    assert response.status_code == 200
    assert response.json()["refused"] == [{"username": "dave", "code": "user_owned_by_other_node"}]
    assert listed(client, hq) == {"alice": "hq", "dave": "branch"}
    assert UserRecord.objects.get(username="dave").status == "online"  # branch's, untouched
    presence = report(client, hq, "hq", [user_entry("alice", "away"), user_entry("dave")])
    assert presence.status_code == 200
    assert UserRecord.objects.get(username="alice").status == "away"


def test_the_names_of_a_revoked_node_are_free_for_another_node(client):
    hq, branch = make_node(client, "hq"), make_node(client, "branch")
    report(client, hq, "hq", [user_entry("alice")])
    services.revoke_node(name="hq")

    claim = report(client, branch, "branch", [user_entry("alice")])

    assert claim.json()["refused"] == []
    assert UserRecord.objects.get(username="alice").node.name == "branch"
    assert listed(client, branch, "branch") == {"alice": "branch"}


def test_a_node_holds_at_most_the_configured_number_of_names(client, settings):
    settings.NODE_MAX_USERNAMES = 2
    hq = make_node(client, "hq")
    report(client, hq, "hq", [user_entry("alice"), user_entry("bob")])
    report(client, hq, "hq", [])  # both stay reserved to hq

    response = report(client, hq, "hq", [user_entry("alice"), user_entry("carol")])

    assert response.json()["refused"] == [{"username": "carol", "code": "too_many_usernames"}]
    assert set(UserRecord.objects.values_list("username", flat=True)) == {"alice", "bob"}


def test_the_command_releases_a_reserved_name_for_another_node(client):
    hq, branch = make_node(client, "hq"), make_node(client, "branch")
    report(client, hq, "hq", [user_entry("alice")])
    report(client, hq, "hq", [])
    out = StringIO()

    call_command("release_username", "alice", stdout=out)

    assert "username 'alice' released (it was reserved to 'hq')" in out.getvalue()
    assert report(client, branch, "branch", [user_entry("alice")]).json()["refused"] == []
    assert UserRecord.objects.get(username="alice").node.name == "branch"


def test_a_name_its_node_still_lists_is_not_released(client):
    hq = make_node(client, "hq")
    report(client, hq, "hq", [user_entry("alice")])
    with pytest.raises(CommandError, match="still listed by hq"):
        call_command("release_username", "alice", stdout=StringIO())
    assert UserRecord.objects.filter(username="alice").exists()


def test_releasing_an_unknown_name_is_refused():
    with pytest.raises(CommandError, match="no user record named 'ghost'"):
        call_command("release_username", "ghost", stdout=StringIO())


def admin_request(user):
    request = RequestFactory().post("/admin/loginserver/userrecord/")
    request.user = user
    request._messages = CookieStorage(request)
    return request


def test_login_server_administrators_release_reserved_names_in_the_admin(client):
    hq = make_node(client, "hq")
    report(client, hq, "hq", [user_entry("alice"), user_entry("bob")])
    report(client, hq, "hq", [user_entry("bob")])
    admin_user, _ = make_person("root", totp=False)
    admin_user.is_staff = True
    admin_user.save()
    admin_user.groups.add(Group.objects.get(name=roles.LOGIN_SERVER_ADMINISTRATORS))
    request = admin_request(admin_user)
    model_admin = UserRecordAdmin(UserRecord, admin_site)

    assert "release" in model_admin.get_actions(request)
    assert not model_admin.has_change_permission(request, UserRecord.objects.first())
    model_admin.release(request, UserRecord.objects.all())

    assert list(UserRecord.objects.values_list("username", flat=True)) == ["bob"]  # still listed
    shown = [str(m) for m in request._messages._queued_messages]
    assert shown == ["Released: alice.", "Not released: 'bob' is still listed by hq: that node "
                     "must remove the person first."]  # fmt: skip


def test_the_release_action_needs_the_change_permission(client):
    viewer, _ = make_person("viewer", totp=False)
    viewer.is_staff = True
    viewer.save()
    request = admin_request(viewer)
    assert "release" not in UserRecordAdmin(UserRecord, admin_site).get_actions(request)


# --- 2. enrolment reads a small body before parsing it -------------------------------------
def padded_enrolment(token: str, size: int) -> bytes:
    body = enrol_body(SigningKey.generate(), token, "hq")
    return body[:-1] + b" " * (size - len(body)) + b"}"


def test_an_enrolment_body_just_over_the_limit_is_refused_before_it_is_parsed(client, monkeypatch):
    _, token = services.create_enrolment_token(node_name="hq")
    body = padded_enrolment(token, 4097)

    def parse_json_object(*args, **kwargs):
        raise AssertionError("an oversized enrolment body was parsed")

    monkeypatch.setattr(protocol, "parse_json_object", parse_json_object)
    response = post_enrol(client, body)

    assert (response.status_code, error_code(response)) == (413, "body_too_large")
    assert response.json()["error"]["message"] == "an enrolment body may be at most 4096 bytes"
    assert not Node.objects.exists()
    assert EnrolmentToken.objects.get().used_at is None


def test_an_enrolment_body_at_the_limit_is_accepted(client):
    _, token = services.create_enrolment_token(node_name="hq")
    assert post_enrol(client, padded_enrolment(token, 4096)).status_code == 201


# --- 3. node URLs at public addresses (production) ------------------------------------------
class Dns:
    """socket.getaddrinfo as the login server sees it: host -> addresses, or unresolvable."""

    def __init__(self):
        self.hosts = {"hq.example.com": ["93.184.216.34"], "branch.example.com": ["93.184.216.35"]}
        self.lookups: list[str] = []
        self.hang = threading.Event()
        self.hanging = False

    def getaddrinfo(self, host, port, *args, **kwargs):
        self.lookups.append(host)
        if self.hanging:
            self.hang.wait(timeout=30)
        try:
            addresses = self.hosts[host]
        except KeyError:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None
        family = {True: socket.AF_INET6, False: socket.AF_INET}
        return [(family[":" in a], socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]


@pytest.fixture
def production(settings, monkeypatch):
    settings.PRODUCTION = True
    dns = Dns()
    monkeypatch.setattr(socket, "getaddrinfo", dns.getaddrinfo)
    services.recent_url_refusals.clear()  # each test starts with no remembered refusal
    yield dns
    dns.hang.set()  # lets a lookup the test abandoned finish
    services.recent_url_refusals.clear()


def enrol_at(client, url: str, name: str = "hq"):
    _, token = services.create_enrolment_token(node_name=name)
    return post_enrol(client, enrol_body(SigningKey.generate(), token, name, url=url))


@pytest.mark.parametrize(
    ("url", "hosts", "code"),
    [
        ("https://127.0.0.1", {}, "private_node_url"),
        ("https://[::1]:8443", {}, "private_node_url"),
        ("https://10.0.0.7", {}, "private_node_url"),
        ("https://169.254.169.254", {}, "private_node_url"),
        ("https://intranet.example.com", {"intranet.example.com": ["192.168.1.20"]},
         "private_node_url"),
        # one private address among public ones is enough to refuse
        ("https://mixed.example.com", {"mixed.example.com": ["93.184.216.34", "fd00::1"]},
         "private_node_url"),
        ("https://nowhere.example.com", {}, "unresolvable_node_url"),
    ],
)  # fmt: skip
def test_in_production_an_enrolment_with_a_url_not_at_a_public_address_is_refused(
    client, production, url, hosts, code
):
    production.hosts.update(hosts)
    response = enrol_at(client, url)
    assert (response.status_code, error_code(response)) == (400, code)
    assert not Node.objects.exists()
    assert EnrolmentToken.objects.get().used_at is None


def test_in_production_an_enrolment_at_a_public_address_is_accepted(client, production):
    assert enrol_at(client, "https://hq.example.com").status_code == 201
    assert production.lookups == ["hq.example.com"]


def test_a_lookup_that_does_not_answer_in_time_is_a_refusal(client, production, settings):
    settings.NODE_URL_RESOLVE_TIMEOUT_S = 0.05
    production.hanging = True
    response = enrol_at(client, "https://hq.example.com")
    assert (response.status_code, error_code(response)) == (400, "unresolvable_node_url")
    assert not Node.objects.exists()


def test_an_unknown_token_costs_no_lookup(client, production):
    body = enrol_body(SigningKey.generate(), "not-a-token", "hq", url="https://hq.example.com")
    assert error_code(post_enrol(client, body)) == "token_invalid"
    assert production.lookups == []


def test_the_operator_can_allow_private_node_urls(client, production, settings):
    settings.ALLOW_PRIVATE_NODE_URLS = True
    assert enrol_at(client, "https://10.0.0.7").status_code == 201
    assert production.lookups == []


def test_outside_production_a_node_may_enrol_on_loopback(client):
    assert enrol_at(client, "http://127.0.0.1:8101").status_code == 201


def report_at(client, key, url: str, node: str = "hq"):
    body = json.dumps({"url": url, "users": [user_entry("alice")]}).encode()
    return signed(client, key, node, "POST", REPORT, body)


def production_node(client, production) -> SigningKey:
    key = SigningKey.generate()
    _, token = services.create_enrolment_token(node_name="hq")
    url = "https://hq.example.com"
    assert post_enrol(client, enrol_body(key, token, "hq", url=url)).status_code == 201
    production.lookups.clear()
    return key


def test_in_production_a_report_moving_a_node_to_a_private_address_is_refused(client, production):
    key = production_node(client, production)
    response = report_at(client, key, "https://10.0.0.7")
    assert (response.status_code, error_code(response)) == (400, "private_node_url")
    assert Node.objects.get().url == "https://hq.example.com"
    assert not UserRecord.objects.exists()


def test_a_report_moving_a_node_to_a_public_address_is_checked_once_and_stored(client, production):
    key = production_node(client, production)
    response = report_at(client, key, "https://branch.example.com")
    assert response.status_code == 200
    assert production.lookups == ["branch.example.com"]
    assert Node.objects.get().url == "https://branch.example.com"
    assert UserRecord.objects.get().username == "alice"


def test_a_node_reporting_a_refused_url_again_costs_no_new_lookup(client, production):
    key = production_node(client, production)
    production.hosts["evil.example.com"] = ["10.0.0.7"]
    lookups = len(production.lookups)

    answers = [report_at(client, key, "https://evil.example.com") for _ in range(3)]

    assert [a.json()["error"]["code"] for a in answers] == ["private_node_url"] * 3
    assert production.lookups[lookups:] == ["evil.example.com"]


def test_a_report_keeping_its_url_costs_no_lookup(client, production):
    key = production_node(client, production)
    assert report_at(client, key, "https://hq.example.com").status_code == 200
    assert production.lookups == []


# --- 4. an unchanged directory is answered with a signed 304 -------------------------------
def verify_unchanged(headers, nonce: str, etag: str) -> int:
    generated = int(headers["X-P2P-Generated-Ms"])
    protocol.verify_directory_unchanged(
        bytes(services.server_signing_key().verify_key),
        protocol.b64d(headers["X-P2P-Signature"], field="sig", length=64),
        nonce=nonce,
        etag=etag,
        generated_ms=generated,
    )
    return generated


def test_a_304_is_signed_over_the_request_nonce_the_etag_and_the_time(client):
    key = make_node(client)
    report(client, key, "hq", [user_entry("alice")])
    first = fetch(client, key)
    etag = first["ETag"]
    nonce = "ab" * 16

    response = fetch(client, key, HTTP_IF_NONE_MATCH=etag, nonce=nonce)

    assert (response.status_code, response.content) == (304, b"")
    generated = verify_unchanged(response, nonce, etag)
    assert generated == json.loads(first.content)["generated_ms"]


@pytest.mark.django_db(transaction=True)
def test_the_fast_path_signs_its_304_the_same_way():
    key, app = enrol("hq"), NodeApi(Django())
    _, headers, _ = call(app, "GET", DIRECTORY, headers=[auth(key, "GET", DIRECTORY)])
    etag, nonce = headers[b"etag"], "cd" * 16
    value = protocol.sign_request(
        key, node="hq", method="GET", path=DIRECTORY, body=b"", nonce=nonce
    ).encode()

    status, answer, body = call(
        app, "GET", DIRECTORY, headers=[(b"authorization", value), (b"if-none-match", etag)]
    )

    assert (status, body) == (304, b"")
    signed_headers = {
        "X-P2P-Signature": answer[b"x-p2p-signature"].decode(),
        "X-P2P-Generated-Ms": answer[b"x-p2p-generated-ms"].decode(),
    }
    verify_unchanged(signed_headers, nonce, etag.decode())


def test_a_url_that_did_not_resolve_is_looked_up_again_at_the_next_report(client, production):
    """DNS may be catching up after a move: only "not public" answers are remembered."""
    key = production_node(client, production)
    first = report_at(client, key, "https://moving.example.com")
    production.hosts["moving.example.com"] = ["93.184.216.36"]
    second = report_at(client, key, "https://moving.example.com")

    assert error_code(first) == "unresolvable_node_url"
    assert second.status_code == 200
    assert production.lookups == ["moving.example.com", "moving.example.com"]
