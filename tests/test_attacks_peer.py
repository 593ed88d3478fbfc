"""A rogue peer against a node: an enrolled node whose every request the test builds.

In process (the Django test client, the same peer API code) for what a request's bytes
decide; against a real node process (uvicorn, as deployed behind its proxy) for what only a
socket shows: a body sent a few bytes at a time, cut off, or longer than allowed.

Already proven elsewhere (one line per attack, so this file reads as the complete list):
- A request signed by another key:
  test_messaging_inbox.test_a_request_signed_by_another_key_is_refused
- No signature, a malformed header, a timestamp too big for a clock:
  test_messaging_inbox.test_an_unsigned_request_is_refused,
  test_a_timestamp_too_big_for_any_clock_is_refused_not_a_500, test_protocol_properties
- An envelope signed by someone else, or changed after signing:
  test_messaging_inbox.test_a_bad_envelope_signature_is_refused,
  test_modified_envelope_bytes_are_refused
- The same request again (same nonce): test_messaging_inbox.test_a_replayed_request_is_refused
- A timestamp far in the past: test_messaging_inbox.test_a_stale_request_is_refused
- An envelope addressed to another node (also a request captured on its way to another
  node and replayed here: the request verifies, its envelopes do not belong here):
  test_messaging_inbox.test_an_envelope_for_another_node_is_refused
- An envelope sealed to someone else, or re-sealed by its sender with other bytes:
  test_messaging_inbox.test_an_envelope_encrypted_to_someone_else_fails_to_decrypt,
  test_a_modified_ciphertext_signed_by_the_sender_fails_to_decrypt
- A sender the calling node does not host, or a person of another node:
  test_messaging_inbox.test_an_envelope_naming_another_sender_node_is_refused,
  test_a_sender_who_belongs_to_another_node_is_refused, test_an_unknown_sender_is_refused
- A remote sender using a local person's name:
  test_hardening_delivery_inbox.test_a_remote_sender_with_a_local_persons_name_is_refused_alone
- Someone else's stored envelope id, another text under one's own id:
  test_hardening_delivery_inbox.test_another_sender_reusing_a_stored_id_is_refused_as_a_conflict
- A read receipt for messages the reader never got: test_messaging_inbox
  .test_a_read_receipt_marks_only_the_senders_messages_to_that_reader
- A body over the limit once read, too many envelopes, an envelope over 64 KiB, malformed
  JSON: test_messaging_inbox.test_an_oversized_body_is_refused,
  test_a_batch_with_too_many_envelopes_is_refused, test_an_oversized_envelope_is_refused_alone,
  test_a_malformed_batch_is_refused_whole
- A revoked node: test_messaging_inbox.test_a_revoked_node_is_refused (in process) and
  test_network_directory.test_a_revoked_node_disappears_and_its_requests_are_refused (real)
- Garbage to the inbox gets JSON, not an HTML 500:
  test_error_pages.test_a_peer_posting_garbage_to_the_inbox_gets_json_not_html
- A peer that answers slowly or floods its answer (the other direction):
  test_delivery_limits.test_a_trickling_peer_is_cut_off_at_the_deadline_and_backed_off
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
from django.conf import settings as django_settings

from messaging.models import Message, ReceivedEnvelope
from peers import protocol
from peers.models import SeenNonce
from tests.helpers import rogue
from tests.helpers.messaging import (
    INBOX,
    join_local_node,
    make_local_person,
    make_remote_node,
    make_remote_person,
    seal_from,
)
from tests.network import Network


def nothing_stored() -> bool:
    return not Message.objects.exists() and not ReceivedEnvelope.objects.exists()


def post(client, node: rogue.RogueNode, body: bytes, *, sent: bytes | None = None, **auth):
    """POST to the inbox signed over body; `sent` is what actually arrives (default body)."""
    return client.post(
        INBOX,
        data=body if sent is None else sent,
        content_type="application/json",
        HTTP_AUTHORIZATION=node.authorization("POST", INBOX, body, **auth),
    )


@pytest.fixture
def net():
    """This node "hq" with bob and alice; the rogue node "branch" hosts rita."""

    class Net:
        pass

    n = Net()
    join_local_node("hq")
    n.bob, n.alice = make_local_person("bob"), make_local_person("alice")
    branch = make_remote_node("branch")
    n.rita = make_remote_person(branch, "rita")
    n.branch = rogue.RogueNode("branch", branch.key)
    return n


# --- in process -------------------------------------------------------------------------------
@pytest.mark.django_db
@pytest.mark.parametrize("offset_s", [-10, +10], ids=["behind", "ahead"])
def test_a_clock_beyond_the_window_either_way_is_refused(client, net, offset_s):
    window = django_settings.REQUEST_MAX_SKEW_S
    skewed = int(time.time()) + (window + abs(offset_s)) * (1 if offset_s > 0 else -1)
    body = protocol.encode_batch([seal_from(net.rita, net.bob)])

    response = post(client, net.branch, body, timestamp=skewed)

    assert (response.status_code, response.json()["error"]["code"]) == (401, "stale_timestamp")
    assert nothing_stored() and not SeenNonce.objects.exists()


@pytest.mark.django_db
def test_a_reused_nonce_is_refused_even_over_a_new_body(client, net):
    nonce = protocol.new_nonce()
    first = protocol.encode_batch([seal_from(net.rita, net.bob, {"text": "first"})])
    assert post(client, net.branch, first, nonce=nonce).status_code == 200
    second = protocol.encode_batch([seal_from(net.rita, net.bob, {"text": "second"})])

    response = post(client, net.branch, second, nonce=nonce)

    assert (response.status_code, response.json()["error"]["code"]) == (401, "replayed_nonce")
    assert list(Message.objects.values_list("text", flat=True)) == ["first"]


@pytest.mark.django_db
def test_a_body_cut_short_in_transit_is_refused_and_spends_nothing(client, net):
    body = protocol.encode_batch([seal_from(net.rita, net.bob)])
    nonce = protocol.new_nonce()

    response = post(client, net.branch, body, sent=body[: len(body) // 2], nonce=nonce)

    assert (response.status_code, response.json()["error"]["code"]) == (401, "bad_signature")
    assert nothing_stored()
    # The cut request claimed no nonce: the same request, whole, is accepted once.
    whole = post(client, net.branch, body, nonce=nonce)
    assert whole.status_code == 200 and len(whole.json()["acks"]) == 1


@pytest.mark.django_db
@pytest.mark.parametrize(("field", "value"), [("recipient", "alice"), ("recipient_node", "x")])
def test_an_envelope_re_addressed_on_the_way_is_refused(client, net, field, value):
    """rita wrote to bob; whoever relays it changes the address but cannot sign as rita."""
    sealed = seal_from(net.rita, net.bob, {"text": "for bob only"})
    envelope = json.loads(sealed.raw)
    envelope[field] = value
    re_addressed = protocol.SignedEnvelope(protocol.canonical_json(envelope), sealed.signature)

    response = post(client, net.branch, protocol.encode_batch([re_addressed]))

    assert response.status_code == 200
    assert [e["code"] for e in response.json()["errors"]] == ["bad_envelope_signature"]
    assert nothing_stored()


# --- against a real node process -------------------------------------------------------------
PASSWORD = "a long enough passphrase 42"
BODY_LIMIT = 64 * 1024

LEARN_SCRIPT = """
from accounts.models import User
from peers import protocol
from peers.identity import local_node
from peers.services import fetch_directory
fetch_directory()
print(protocol.b64e(bytes(User.objects.get(username="bob").keys.box_public)))
print(protocol.b64e(bytes(local_node().sign_public)))
"""


class LiveNet:
    """hq as real processes; the rogue node "rogue" (hosting mallory) enrolled by the test."""

    def __init__(self, network: Network):
        self.network = network
        hq = network.node("hq")
        self.address = ("127.0.0.1", hq.port)
        self.host = f"127.0.0.1:{hq.port}"
        self.log = hq.data_dir / "logs" / "web.log"
        self.rogue = rogue.RogueNode("rogue")
        self.mallory = rogue.RoguePerson("mallory")
        login = network.login_server
        ls_address, ls_host = ("127.0.0.1", login.port), f"127.0.0.1:{login.port}"
        token = login.manage("create_enrolment_token", "rogue").stdout.strip().splitlines()[-1]
        enrol = self.rogue.enrolment_body(token=token.strip(), url="http://127.0.0.1:9")
        head = rogue.request_head(
            "POST",
            "/api/v1/enrol",
            host=ls_host,
            headers={"Content-Type": "application/json"},
            content_length=len(enrol),
        )
        assert rogue.exchange(ls_address, head, enrol).status == 201
        report = self.rogue.report_body(self.mallory)
        head = self.rogue.signed_head("POST", "/api/v1/report", report, host=ls_host)
        assert rogue.exchange(ls_address, head, report).status == 200
        network.create_person("hq", "bob", PASSWORD)
        bob_box, hq_key = hq.manage("shell", "-c", LEARN_SCRIPT).stdout.split()[-2:]
        self.bob_box = protocol.b64d(bob_box, field="bob")
        self.hq_key = protocol.b64d(hq_key, field="hq")

    def batch_for_bob(self, text: str = "hello") -> tuple[protocol.SignedEnvelope, bytes]:
        sealed = rogue.seal(
            self.mallory,
            sender_node="rogue",
            recipient="bob",
            recipient_node="hq",
            recipient_box_key=self.bob_box,
            text=text,
        )
        return sealed, protocol.encode_batch([sealed])

    def acknowledged(self, answer: rogue.RawAnswer, sealed: protocol.SignedEnvelope) -> bool:
        assert answer is not None and answer.status == 200, answer
        [ack] = answer.json()["acks"]
        protocol.verify_ack(self.hq_key, ack, envelope_id=sealed.id, raw=sealed.raw)
        return True

    def no_server_error(self) -> bool:
        log = self.log.read_text(errors="replace")
        return "Traceback" not in log and "Internal Server Error" not in log


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    with Network(
        tmp_path_factory.mktemp("rogue-peer"),
        nodes=("hq",),
        start_workers=False,
        settings={"P2P_PEER_MAX_BODY_BYTES": str(BODY_LIMIT)},
    ) as network:
        yield LiveNet(network)


@pytest.mark.integration
def test_a_body_sent_a_few_bytes_at_a_time_holds_nobody_up_and_is_answered(live):
    sealed, body = live.batch_for_bob("slowly")
    head = live.rogue.signed_head("POST", INBOX, body, host=live.host)
    with rogue.connect(live.address) as slow:
        slow.sendall(head)
        sender = threading.Thread(
            target=rogue.trickle,
            args=(slow, body),
            kwargs={"chunk_bytes": len(body) // 8 + 1, "pause_s": 0.4},  # about 3 s
        )
        sender.start()
        other = rogue.exchange(
            live.address, rogue.request_head("GET", "/health/live", host=live.host)
        )
        answered_meanwhile = sender.is_alive()
        sender.join()
        answer = rogue.read_answer(slow)  # bounded by the socket timeout: never forever

    assert other.status == 200 and answered_meanwhile
    assert live.acknowledged(answer, sealed)
    assert live.no_server_error()


@pytest.mark.integration
def test_a_body_cut_off_by_a_closed_connection_changes_nothing(live):
    sealed, body = live.batch_for_bob("cut off")
    head = live.rogue.signed_head("POST", INBOX, body, host=live.host)
    with rogue.connect(live.address) as cut:
        cut.sendall(head + body[: len(body) // 2])
        cut.shutdown(socket.SHUT_WR)
        answer = rogue.read_answer(cut)

    assert answer is None or 400 <= answer.status < 500
    # Nothing was applied, not even the nonce: the very same request, whole, is stored.
    assert live.acknowledged(rogue.exchange(live.address, head, body), sealed)
    assert live.no_server_error()


@pytest.mark.integration
def test_a_body_declared_over_the_limit_is_refused_before_it_is_sent(live):
    head = live.rogue.signed_head(
        "POST", INBOX, b"", host=live.host, content_length=1000 * BODY_LIMIT
    )
    with rogue.connect(live.address, timeout_s=3) as sock:
        sock.sendall(head + b"x" * 1024)
        try:
            answer = rogue.read_answer(sock)
        except TimeoutError:
            answer = None  # still waiting for the other 64 MB

    assert answer is not None
    assert (answer.status, answer.error_code) == (413, "body_too_large")
    assert live.no_server_error()
