"""Rotating an office node's signing key: the login server endpoint through the Django
test client, the node's service and command against a live login server (also when the
answer is lost and the command runs again), with real signatures."""

from __future__ import annotations

import json

import pytest
import requests
from django.core.management import CommandError, call_command
from nacl.signing import SigningKey

from accounts.crypto import encrypt_at_rest
from loginserver import services as ls
from loginserver.models import DirectoryVersion, Node
from peers import protocol, services
from peers.client import local_identity
from peers.identity import node_signing_key, pending_signing_key
from peers.models import NodeIdentity
from tests.test_loginserver_api import error_code, make_node, signed, user_entry

pytestmark = [pytest.mark.django_db, pytest.mark.urls("loginserver.urls")]

ROTATE = "/api/v1/rotate-key"
REPORT = "/api/v1/report"


def rotation_body(new_key: SigningKey, node: str = "hq", **overrides) -> bytes:
    obj = {
        "sign_key": protocol.b64e(bytes(new_key.verify_key)),
        "proof": protocol.b64e(protocol.sign_rotation(new_key, node=node)),
    }
    obj.update(overrides)
    return json.dumps({k: v for k, v in obj.items() if v is not None}).encode()


def rotate(client, current: SigningKey, body: bytes, node: str = "hq"):
    return signed(client, current, node, "POST", ROTATE, body)


def report(client, key: SigningKey, node: str = "hq"):
    body = json.dumps({"users": [user_entry("alice")]}).encode()
    return signed(client, key, node, "POST", REPORT, body)


def stored_key(name: str = "hq") -> bytes:
    return bytes(Node.objects.get(name=name).sign_key)


def directory_version() -> str:
    return DirectoryVersion.objects.filter(pk=1).values_list("token", flat=True).first() or ""


# --- the login server endpoint ------------------------------------------------------------
def test_it_rotates_the_key_and_answers_the_new_fingerprint(client):
    old = make_node(client)
    new = SigningKey.generate()
    version = directory_version()
    response = rotate(client, old, rotation_body(new))
    assert response.status_code == 200
    assert response.json() == {
        "node": "hq",
        "node_fingerprint": protocol.fingerprint(bytes(new.verify_key)),
    }
    assert stored_key() == bytes(new.verify_key)
    assert directory_version() != version


def test_after_rotation_the_new_key_signs_and_the_old_key_is_refused(client):
    old = make_node(client)
    new = SigningKey.generate()
    assert rotate(client, old, rotation_body(new)).status_code == 200
    assert report(client, new).status_code == 200
    refused = report(client, old)
    assert refused.status_code == 401
    assert error_code(refused) == "bad_signature"


def test_the_directory_lists_the_new_node_key(client):
    old = make_node(client)
    new = SigningKey.generate()
    assert rotate(client, old, rotation_body(new)).status_code == 200
    response = signed(client, new, "hq", "GET", "/api/v1/directory")
    assert response.status_code == 200
    (node,) = json.loads(response.content)["nodes"]
    assert node["sign_key"] == protocol.b64e(bytes(new.verify_key))


def test_a_proof_by_another_key_is_refused_and_changes_nothing(client):
    old = make_node(client)
    new, impostor = SigningKey.generate(), SigningKey.generate()
    version = directory_version()
    forged = protocol.b64e(protocol.sign_rotation(impostor, node="hq"))
    response = rotate(client, old, rotation_body(new, proof=forged))
    assert response.status_code == 400
    assert error_code(response) == "bad_proof"
    assert stored_key() == bytes(old.verify_key)
    assert directory_version() == version


def test_a_proof_made_for_another_node_is_refused(client):
    old = make_node(client)
    new = SigningKey.generate()
    response = rotate(client, old, rotation_body(new, node="branch"))
    assert error_code(response) == "bad_proof"
    assert stored_key() == bytes(old.verify_key)


def test_the_current_key_is_refused_as_a_new_key(client):
    old = make_node(client)
    version = directory_version()
    response = rotate(client, old, rotation_body(old))
    assert response.status_code == 409
    assert error_code(response) == "same_key"
    assert stored_key() == bytes(old.verify_key)
    assert directory_version() == version


def test_an_unsigned_rotation_is_refused(client):
    old = make_node(client)
    response = client.post(
        ROTATE, data=rotation_body(SigningKey.generate()), content_type="application/json"
    )
    assert response.status_code == 401
    assert error_code(response) == "missing_signature"
    assert stored_key() == bytes(old.verify_key)


def test_a_rotation_signed_by_the_new_key_alone_is_refused(client):
    old = make_node(client)
    new = SigningKey.generate()
    response = rotate(client, new, rotation_body(new))
    assert response.status_code == 401
    assert error_code(response) == "bad_signature"
    assert stored_key() == bytes(old.verify_key)


def test_a_revoked_node_cannot_rotate_its_key(client):
    old = make_node(client)
    ls.revoke_node(name="hq")
    response = rotate(client, old, rotation_body(SigningKey.generate()))
    assert response.status_code == 403
    assert error_code(response) == "node_revoked"
    assert stored_key() == bytes(old.verify_key)


def test_a_node_cannot_rotate_another_nodes_key(client):
    hq = make_node(client, "hq")
    branch = make_node(client, "branch")
    new = SigningKey.generate()
    # hq signs the request as hq; the body can only ever change hq's own key.
    assert rotate(client, hq, rotation_body(new, node="branch")).status_code == 400
    assert stored_key("branch") == bytes(branch.verify_key)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "malformed_json"),
        (b"[]", "malformed_json"),
        (b"{}", "missing_field"),
        (json.dumps({"sign_key": protocol.b64e(bytes(32))}).encode(), "missing_field"),
        (json.dumps({"proof": protocol.b64e(bytes(64))}).encode(), "missing_field"),
        (json.dumps({"sign_key": 1, "proof": protocol.b64e(bytes(64))}).encode(), "invalid_field"),
        (
            json.dumps({"sign_key": "short", "proof": protocol.b64e(bytes(64))}).encode(),
            "invalid_field",
        ),
        (
            json.dumps({"sign_key": protocol.b64e(bytes(31)), "proof": "AA=="}).encode(),
            "invalid_field",
        ),
        (
            json.dumps({"sign_key": protocol.b64e(bytes(32)), "proof": "!!"}).encode(),
            "invalid_field",
        ),
    ],
)
def test_a_malformed_rotation_is_refused_and_changes_nothing(client, body, code):
    old = make_node(client)
    version = directory_version()
    response = rotate(client, old, body)
    assert response.status_code == 400
    assert error_code(response) == code
    assert stored_key() == bytes(old.verify_key)
    assert directory_version() == version


def test_a_get_on_the_rotation_endpoint_is_refused(client):
    old = make_node(client)
    response = signed(client, old, "hq", "GET", ROTATE)
    assert response.status_code == 405


# --- the node's service, against a live login server in the same database ----------------
@pytest.fixture
def joined(live_server):
    """This database is both the login server and its enrolled node "hq"."""
    key = SigningKey.generate()
    url = "http://127.0.0.1:8101"
    _, token = ls.create_enrolment_token(node_name="hq")
    proof = protocol.sign_enrolment(key, token=token, name="hq", url=url)
    ls.enrol_node(token=token, name="hq", url=url, sign_key=bytes(key.verify_key), proof=proof)
    NodeIdentity.objects.create(
        pk=1,
        name="hq",
        public_url=url,
        sign_public=bytes(key.verify_key),
        sign_private_encrypted=encrypt_at_rest(bytes(key)),
        login_server_url=live_server.url,
        login_server_key=bytes(ls.server_signing_key().verify_key),
    )
    return key


@pytest.mark.django_db(transaction=True)
def test_the_node_stores_the_key_the_login_server_accepted(joined):
    rotation = services.rotate_node_key()
    assert rotation.old_fingerprint == protocol.fingerprint(bytes(joined.verify_key))
    assert not rotation.resumed
    identity = NodeIdentity.objects.get(pk=1)
    assert protocol.fingerprint(bytes(identity.sign_public)) == rotation.new_fingerprint
    assert identity.sign_pending_encrypted is None
    assert stored_key() == bytes(identity.sign_public)
    # This process signs with the new key at once.
    assert bytes(node_signing_key().verify_key) == bytes(identity.sign_public)
    assert bytes(local_identity().signing_key.verify_key) == bytes(identity.sign_public)
    assert services.report_presence()["users"] == 0


@pytest.mark.django_db(transaction=True)
def test_a_refused_rotation_stores_nothing_on_the_node(joined):
    ls.revoke_node(name="hq")
    before = NodeIdentity.objects.get(pk=1)
    with pytest.raises(services.LoginServerError) as caught:
        services.rotate_node_key()
    assert caught.value.code == "node_revoked"
    after = NodeIdentity.objects.get(pk=1)
    assert bytes(after.sign_private_encrypted) == bytes(before.sign_private_encrypted)
    assert bytes(after.sign_public) == bytes(joined.verify_key)
    assert after.sign_pending_encrypted is None


@pytest.mark.django_db(transaction=True)
def test_the_command_prints_both_fingerprints(joined, capsys):
    call_command("rotate_node_key")
    out = capsys.readouterr().out
    new_key = bytes(NodeIdentity.objects.get(pk=1).sign_public)
    assert f"old node key fingerprint: {protocol.fingerprint(bytes(joined.verify_key))}" in out
    assert f"new node key fingerprint: {protocol.fingerprint(new_key)}" in out
    assert "next directory fetch" in out


# --- an interrupted rotation: the answer is lost, the command runs again ------------------
def lose_the_answer(monkeypatch, *, after_the_login_server_saw_it: bool) -> None:
    """The node's rotation request gets no answer: a connection reset, a timeout, a crash."""
    real_post = services.signed_post

    def post_without_answer(*args, **kwargs):
        if after_the_login_server_saw_it:
            real_post(*args, **kwargs)
        raise requests.ConnectionError("connection reset by peer")

    monkeypatch.setattr(services, "signed_post", post_without_answer)


def pending_public_key() -> bytes:
    key = pending_signing_key(NodeIdentity.objects.get(pk=1))
    assert key is not None
    return bytes(key.verify_key)


def current_public_key() -> bytes:
    return bytes(NodeIdentity.objects.get(pk=1).sign_public)


def interrupted_rotation(monkeypatch, *, after_the_login_server_saw_it: bool) -> bytes:
    """Run the command once with its answer lost; returns the public key left pending."""
    with monkeypatch.context() as patched:
        lose_the_answer(patched, after_the_login_server_saw_it=after_the_login_server_saw_it)
        with pytest.raises(CommandError):
            call_command("rotate_node_key")
    return pending_public_key()


@pytest.mark.django_db(transaction=True)
def test_a_lost_answer_keeps_the_new_key_pending_and_says_the_command_can_run_again(
    joined, monkeypatch
):
    lose_the_answer(monkeypatch, after_the_login_server_saw_it=True)
    with pytest.raises(CommandError, match=r"safe to run manage\.py rotate_node_key again"):
        call_command("rotate_node_key")
    assert current_public_key() == bytes(joined.verify_key)
    assert pending_public_key() == stored_key()


@pytest.mark.django_db(transaction=True)
def test_running_again_after_a_lost_answer_adopts_the_key_the_login_server_took(
    joined, monkeypatch, capsys
):
    new_key = interrupted_rotation(monkeypatch, after_the_login_server_saw_it=True)

    call_command("rotate_node_key")
    out = capsys.readouterr().out
    assert "interrupted run" in out
    assert f"old node key fingerprint: {protocol.fingerprint(bytes(joined.verify_key))}" in out
    assert f"new node key fingerprint: {protocol.fingerprint(new_key)}" in out
    assert current_public_key() == new_key == stored_key()
    assert NodeIdentity.objects.get(pk=1).sign_pending_encrypted is None
    assert services.report_presence()["users"] == 0
    assert services.fetch_directory() == "updated"


@pytest.mark.django_db(transaction=True)
def test_running_again_after_a_request_that_never_arrived_sends_the_same_key(joined, monkeypatch):
    new_key = interrupted_rotation(monkeypatch, after_the_login_server_saw_it=False)
    assert stored_key() == bytes(joined.verify_key)

    rotation = services.rotate_node_key()
    assert rotation.resumed
    assert rotation.new_fingerprint == protocol.fingerprint(new_key)
    assert current_public_key() == new_key == stored_key()
    assert services.report_presence()["users"] == 0


@pytest.mark.django_db(transaction=True)
def test_a_proxy_error_keeps_the_new_key_pending(joined, monkeypatch):
    def bad_gateway(*args, **kwargs):
        response = requests.Response()
        response.status_code = 502
        response._content = b"<html>502 Bad Gateway</html>"
        return response

    monkeypatch.setattr(services, "signed_post", bad_gateway)
    with pytest.raises(services.RotationInterrupted) as caught:
        services.rotate_node_key()
    assert caught.value.code == "http_error"
    assert current_public_key() == bytes(joined.verify_key)
    assert pending_public_key() != bytes(joined.verify_key)


@pytest.mark.django_db(transaction=True)
def test_running_again_while_the_login_server_is_unreachable_keeps_the_key_pending(
    joined, monkeypatch
):
    new_key = interrupted_rotation(monkeypatch, after_the_login_server_saw_it=True)

    def unreachable(*args, **kwargs):
        raise requests.ConnectTimeout("login server unreachable")

    monkeypatch.setattr(services, "signed_get", unreachable)
    with pytest.raises(CommandError, match=r"^unreachable: .* safe to run"):
        call_command("rotate_node_key")
    assert current_public_key() == bytes(joined.verify_key)
    assert pending_public_key() == new_key


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("status", [200, 304])
def test_an_unsigned_ok_from_something_on_the_path_does_not_adopt_the_pending_key(
    joined, monkeypatch, status
):
    """A proxy or cache answering 200/304 is not the login server saying it switched."""
    new_key = interrupted_rotation(monkeypatch, after_the_login_server_saw_it=False)

    def proxy_answer(*args, **kwargs):
        response = requests.Response()
        response.status_code, response._content = status, b'{"nodes": []}'
        return response

    monkeypatch.setattr(services, "signed_get", proxy_answer)
    with pytest.raises(CommandError):
        call_command("rotate_node_key")
    assert current_public_key() == bytes(joined.verify_key)
    assert pending_public_key() == new_key


@pytest.mark.django_db(transaction=True)
def test_a_resent_rotation_refused_because_the_first_one_landed_meanwhile_keeps_the_key(
    joined, monkeypatch
):
    interrupted_rotation(monkeypatch, after_the_login_server_saw_it=False)
    real_post = services.signed_post

    def first_request_lands_first(base_url, path, body, **kwargs):
        # The first, delayed request reaches the login server between check and resend.
        sign_key, proof = ls.parse_rotation(body)
        ls.rotate_node_key(node=Node.objects.get(name="hq"), sign_key=sign_key, proof=proof)
        return real_post(base_url, path, body, **kwargs)

    monkeypatch.setattr(services, "signed_post", first_request_lands_first)
    with pytest.raises(services.RotationInterrupted) as caught:
        services.rotate_node_key()
    assert caught.value.code == "bad_signature"
    assert pending_public_key() == stored_key()
    monkeypatch.undo()
    assert services.rotate_node_key().resumed
    assert current_public_key() == stored_key()


@pytest.mark.django_db(transaction=True)
def test_a_report_refused_for_its_signature_adopts_a_pending_key_the_login_server_took(
    joined, monkeypatch
):
    new_key = interrupted_rotation(monkeypatch, after_the_login_server_saw_it=True)

    with pytest.raises(services.LoginServerError) as caught:
        services.report_presence()
    assert caught.value.code == "bad_signature"
    assert current_public_key() == new_key
    assert services.report_presence()["users"] == 0
    assert services.fetch_directory() == "updated"


@pytest.mark.django_db(transaction=True)
def test_a_signature_refusal_leaves_a_pending_key_the_login_server_does_not_know(
    joined, monkeypatch
):
    new_key = interrupted_rotation(monkeypatch, after_the_login_server_saw_it=False)
    # Something else made the login server refuse the current key (here: a third key).
    Node.objects.filter(name="hq").update(sign_key=bytes(SigningKey.generate().verify_key))

    with pytest.raises(services.LoginServerError) as caught:
        services.fetch_directory()
    assert caught.value.code == "bad_signature"
    assert current_public_key() == bytes(joined.verify_key)
    assert pending_public_key() == new_key


# --- end to end: real nodes, workers and Redis ------------------------------------------
PASSWORD = "a long enough passphrase 42"
PEER_KEY_FINGERPRINT = (
    "from peers.models import PeerNode; from peers import protocol; "
    "print(protocol.fingerprint(bytes(PeerNode.objects.get(name='hq').sign_key)))"
)


def fingerprint_line(output: str, label: str) -> str:
    (line,) = [x for x in output.splitlines() if x.startswith(label)]
    return line.removeprefix(label).strip()


@pytest.mark.integration
def test_after_rotation_hq_messages_reach_branch_which_learned_the_key_from_the_directory(
    tmp_path,
):
    from tests.network import Network, csrf_token, wait_for

    with Network(tmp_path, nodes=("hq", "branch")) as net:
        alice_secret = net.create_person("hq", "alice", PASSWORD)
        net.create_person("branch", "bob", PASSWORD)
        alice = net.login("hq", "alice", PASSWORD, alice_secret)
        hq, branch = net.node("hq"), net.node("branch")
        chat = f"{hq.url}/chat/bob/"
        wait_for(
            lambda: alice.get(chat, timeout=10).status_code == 200,
            timeout=60,
            message="bob in hq's directory",
        )

        output = hq.manage("rotate_node_key").stdout
        old_fp = fingerprint_line(output, "old node key fingerprint:")
        new_fp = fingerprint_line(output, "new node key fingerprint:")
        assert old_fp != new_fp
        # No restart: hq's running web and worker processes pick up the new key by themselves.
        wait_for(
            lambda: (
                new_fp
                in branch.manage("shell", "-v", "0", "-c", PEER_KEY_FINGERPRINT, check=False).stdout
            ),
            timeout=60,
            message="branch has hq's new key from the directory",
        )

        page = alice.get(chat, timeout=10)
        sent = alice.post(
            chat,
            data={"csrfmiddlewaretoken": csrf_token(page.text), "text": "signed anew"},
            timeout=10,
            allow_redirects=False,
        )
        assert sent.status_code == 302

        def delivered() -> bool:
            answer = alice.get(f"{chat}messages.json?after=0", timeout=10).json()
            return any(
                m["text"] == "signed anew"
                and answer["statuses"].get(str(m["id"]), m["status"]) == "delivered"
                for m in answer["messages"]
            )

        wait_for(delivered, timeout=60, message="the message delivered to branch")
