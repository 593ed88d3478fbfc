"""Hardening, the node's side: it keeps the names the login server refused, accepts only a
304 signed for its own request, and in production posts to peers at public addresses only.

One database is both the login server (served by live_server) and its node "hq"."""

from __future__ import annotations

import json
import logging

import pytest
import requests
from nacl.signing import SigningKey

from loginserver import services as ls
from peers import client, protocol, services
from peers.identity import local_node
from peers.models import DirectorySync, SeenNonce
from tests.helpers.factories import make_person
from tests.test_node_key_rotation import joined  # noqa: F401 (a fixture)

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.urls("loginserver.urls"),
    pytest.mark.usefixtures("joined"),
]

EMPTY_REPORT = json.dumps({"users": []}).encode()


def enrol_branch_with(username: str) -> None:
    """Another node, "branch", that claimed username first."""
    key, url = SigningKey.generate(), "http://127.0.0.1:8102"
    _, token = ls.create_enrolment_token(node_name="branch")
    proof = protocol.sign_enrolment(key, token=token, name="branch", url=url)
    node = ls.enrol_node(
        token=token, name="branch", url=url, sign_key=bytes(key.verify_key), proof=proof
    )
    user = ls.ReportedUser(username, bytes([7]) * 32, bytes([8]) * 32, "", "", "online", None)
    ls.accept_report(node=node, report=ls.Report(url=None, users=[user]))


def joined_url() -> str:
    return local_node().login_server_url


def refused_usernames() -> list:
    return DirectorySync.objects.get(pk=1).refused_usernames


# --- 1. names the login server refused -------------------------------------------------------
def test_the_node_logs_and_keeps_the_names_the_login_server_refused(caplog):
    enrol_branch_with("alice")
    make_person("alice")
    make_person("bob")

    with caplog.at_level(logging.WARNING, logger="peers.services"):
        answer = services.report_presence()

    refused = [{"username": "alice", "code": "user_owned_by_other_node"}]
    assert (answer["users"], answer["refused"]) == (2, refused)
    assert refused_usernames() == refused
    assert "login server refused usernames of this node: alice (user_owned_by_other_node)" in (
        caplog.text
    )


def test_the_refused_list_clears_once_the_login_server_accepts_every_name():
    enrol_branch_with("alice")
    make_person("alice")
    services.report_presence()
    ls.revoke_node(name="branch")  # its names are free again

    assert services.report_presence()["refused"] == []
    assert refused_usernames() == []


def test_a_malformed_refused_list_keeps_only_well_formed_names():
    assert services._refused_names(
        [
            {"username": "zoe", "code": "user_owned_by_other_node"},
            {"username": "al ice", "code": "x"},
            {"username": "bob"},
            "carol",
            {"username": "ann", "code": "too_many\nusernames"},
        ]
    ) == [
        {"username": "ann", "code": "too_manyusernames"},
        {"username": "zoe", "code": "user_owned_by_other_node"},
    ]
    assert services._refused_names("everyone") == []


# --- 4. a 304 must be signed for this request ------------------------------------------------
def test_a_signed_304_leaves_the_directory_as_it_is():
    assert services.fetch_directory() == "updated"
    assert services.fetch_directory() == "unchanged"
    assert DirectorySync.objects.get(pk=1).last_error == ""


def answer_304(headers: dict[str, str]) -> requests.Response:
    response = requests.Response()
    response.status_code, response._content = 304, b""
    response.headers.update(headers)
    return response


def test_an_unsigned_304_is_a_failed_fetch_and_the_next_fetch_gets_the_whole_directory(
    monkeypatch,
):
    services.fetch_directory()
    etag = DirectorySync.objects.get(pk=1).etag

    with monkeypatch.context() as path:  # something on the path answers for the login server
        path.setattr(services, "signed_get", lambda *a, **kw: answer_304({"ETag": etag}))
        with pytest.raises(protocol.ProtocolError) as refused:
            services.fetch_directory()

    assert refused.value.code == "bad_unchanged_signature"
    sync = DirectorySync.objects.get(pk=1)
    assert (sync.last_error, sync.etag) == ("bad_unchanged_signature", "")
    assert services.fetch_directory() == "updated"


def test_a_304_signed_for_another_request_is_refused(monkeypatch):
    services.fetch_directory()
    etag = DirectorySync.objects.get(pk=1).etag
    base = joined_url()
    recorded = client.signed_get(base, "/api/v1/directory", {"If-None-Match": etag})
    assert recorded.status_code == 304 and recorded.headers["X-P2P-Signature"]

    monkeypatch.setattr(services, "signed_get", lambda *a, **kw: recorded)  # a replay
    with pytest.raises(protocol.ProtocolError) as refused:
        services.fetch_directory()
    assert refused.value.code == "bad_unchanged_signature"


# --- 3. peers at public addresses only, in production -----------------------------------------
def test_in_production_a_node_does_not_post_to_a_peer_on_loopback(settings):
    settings.PRODUCTION = True
    with pytest.raises(client.PeerAddressRefused, match="not a public address"):
        client.signed_post(joined_url(), "/api/v1/report", EMPTY_REPORT, deadline_s=5)
    with pytest.raises(requests.RequestException):  # what delivery catches: a retry later
        client.signed_post(joined_url(), "/api/v1/report", EMPTY_REPORT)
    assert not SeenNonce.objects.exists()  # nothing reached the other side


def test_the_login_server_url_is_the_operators_and_not_checked(settings):
    settings.PRODUCTION = True
    response = client.signed_post(
        joined_url(), "/api/v1/report", EMPTY_REPORT, deadline_s=5, to_login_server=True
    )
    assert response.status_code == 200


def test_the_operator_can_allow_peers_at_private_addresses(settings):
    settings.PRODUCTION = True
    settings.ALLOW_PRIVATE_NODE_URLS = True
    assert client.signed_post(joined_url(), "/api/v1/report", EMPTY_REPORT).status_code == 200


def test_a_connection_opened_for_the_login_server_is_not_reused_to_reach_a_peer(settings):
    """A node reporting the login server's own (internal) URL as its URL gains nothing."""
    settings.PRODUCTION = True
    login_server = client.signed_post(
        joined_url(), "/api/v1/report", EMPTY_REPORT, deadline_s=5, to_login_server=True
    )
    assert login_server.status_code == 200  # its connection is pooled now
    with pytest.raises(client.PeerAddressRefused):
        client.signed_post(joined_url(), "/api/v1/report", EMPTY_REPORT, deadline_s=5)
