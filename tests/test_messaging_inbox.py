"""The peer inbox: real request signatures through the Django test client, real envelopes."""

from __future__ import annotations

import base64
import json

import pytest

from messaging.models import Message, ReceivedEnvelope
from peers import protocol
from peers.models import SeenNonce
from tests.helpers.messaging import (
    INBOX,
    make_inbox_network,
    make_local_person,
    make_remote_person,
    post_signed,
    seal_from,
    stored_message,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def net():
    return make_inbox_network()


def entry(sealed: protocol.SignedEnvelope) -> dict:
    return {"body": protocol.b64e(sealed.raw), "sig": protocol.b64e(sealed.signature)}


def batch(*sealed: protocol.SignedEnvelope) -> bytes:
    return protocol.encode_batch(list(sealed))


def nothing_stored() -> bool:
    return not Message.objects.exists() and not ReceivedEnvelope.objects.exists()


def only_error(response) -> dict:
    assert response.status_code == 200, response.content
    answer = response.json()
    assert answer["acks"] == []
    assert len(answer["errors"]) == 1
    return answer["errors"][0]


# --- a good delivery -------------------------------------------------------------------------
def test_it_stores_a_message_and_answers_a_verifiable_ack(client, net):
    sealed = seal_from(net.rita, net.bob, {"text": "Quarterly numbers are in"})
    response = post_signed(client, net.branch, batch(sealed))
    assert response.status_code == 200
    answer = response.json()
    assert answer["errors"] == []
    protocol.verify_ack(
        bytes(net.node_key.verify_key), answer["acks"][0], envelope_id=sealed.id, raw=sealed.raw
    )
    message = Message.objects.get()
    assert (message.owner, message.peer_username, message.direction) == (net.bob, "rita", "in")
    assert message.text == "Quarterly numbers are in"


def test_unicode_text_is_stored_byte_exact(client, net):
    text = (
        "👨\u200d👩\u200d👧\u200d👦 Zoe\u0308 "
        "\u0645\u0631\u062d\u0628\u0627 \u05e9\u05dc\u05d5\u05dd ✅\n\tend"
    )
    post_signed(client, net.branch, batch(seal_from(net.rita, net.bob, {"text": text})))
    assert Message.objects.get().text.encode("utf-8") == text.encode("utf-8")


def test_a_duplicate_batch_gets_identical_acks_and_is_stored_once(client, net):
    body = batch(seal_from(net.rita, net.bob), seal_from(net.rita, net.bob, {"text": "two"}))
    first = post_signed(client, net.branch, body).json()
    second = post_signed(client, net.branch, body).json()
    assert first["acks"] == second["acks"]
    assert len(first["acks"]) == 2 and second["errors"] == []
    assert Message.objects.count() == 2
    assert ReceivedEnvelope.objects.count() == 2


def test_the_same_envelope_twice_in_one_batch_is_stored_once(client, net):
    sealed = seal_from(net.rita, net.bob)
    answer = post_signed(client, net.branch, batch(sealed, sealed)).json()
    assert answer["acks"][0] == answer["acks"][1]
    assert Message.objects.count() == 1


def test_a_good_envelope_is_stored_next_to_a_refused_one(client, net):
    good = seal_from(net.rita, net.bob, {"text": "fine"})
    bad = seal_from(net.rita, net.bob, recipient="nobody")
    answer = post_signed(client, net.branch, batch(bad, good)).json()
    assert [a["id"] for a in answer["acks"]] == [good.id]
    assert answer["errors"] == [
        {
            "index": 0,
            "id": bad.id,
            "code": "unknown_recipient",
            "message": "no such person on this node",
        }
    ]
    assert list(Message.objects.values_list("text", flat=True)) == ["fine"]


def test_a_read_receipt_marks_only_the_senders_messages_to_that_reader(client, net):
    alice = make_local_person("alice")
    to_rita = stored_message(net.bob, "rita", direction="out", text="x", created_ms=1)
    to_olga = stored_message(net.bob, "olga", direction="out", text="y", created_ms=2)
    alices = stored_message(alice, "rita", direction="out", text="z", created_ms=3)
    ids = [str(m.envelope_id) for m in (to_rita, to_olga, alices)]
    receipt = seal_from(net.rita, net.bob, {"ids": ids}, kind="read")
    answer = post_signed(client, net.branch, batch(receipt)).json()
    assert len(answer["acks"]) == 1
    statuses = dict(Message.objects.values_list("id", "status"))
    assert statuses == {to_rita.id: "read", to_olga.id: "delivered", alices.id: "delivered"}


# --- one refused envelope per bad input: the code, and nothing stored ------------------------
def test_an_unknown_sender_is_refused(client, net):
    stranger = make_remote_person(net.branch, "stranger")
    sealed = seal_from(stranger, net.bob)
    stranger_row = net.branch.row.users.get(username="stranger")
    stranger_row.delete()
    assert only_error(post_signed(client, net.branch, batch(sealed)))["code"] == "unknown_sender"
    assert nothing_stored()


def test_an_envelope_naming_another_sender_node_is_refused(client, net):
    sealed = seal_from(net.olga, net.bob)  # olga's envelope says sender_node "other"
    error = only_error(post_signed(client, net.branch, batch(sealed)))
    assert error["code"] == "sender_not_on_node"
    assert nothing_stored()


def test_a_sender_who_belongs_to_another_node_is_refused(client, net):
    sealed = seal_from(net.olga, net.bob, sender_node="branch")  # branch speaking for olga
    error = only_error(post_signed(client, net.branch, batch(sealed)))
    assert error["code"] == "sender_not_on_node"
    assert nothing_stored()


def test_a_bad_envelope_signature_is_refused(client, net):
    sealed = seal_from(net.rita, net.bob)
    forged = protocol.SignedEnvelope(sealed.raw, net.olga.sign.sign(sealed.raw).signature)
    error = only_error(post_signed(client, net.branch, batch(forged)))
    assert error["code"] == "bad_envelope_signature"
    assert nothing_stored()


def test_modified_envelope_bytes_are_refused(client, net):
    sealed = seal_from(net.rita, net.bob)
    obj = json.loads(sealed.raw)
    ciphertext = bytearray(base64.b64decode(obj["ciphertext"]))
    ciphertext[-1] ^= 1
    obj["ciphertext"] = protocol.b64e(bytes(ciphertext))
    tampered = protocol.SignedEnvelope(protocol.canonical_json(obj), sealed.signature)
    error = only_error(post_signed(client, net.branch, batch(tampered)))
    assert error["code"] == "bad_envelope_signature"
    assert nothing_stored()


def test_a_modified_ciphertext_signed_by_the_sender_fails_to_decrypt(client, net):
    sealed = seal_from(net.rita, net.bob)
    obj = json.loads(sealed.raw)
    ciphertext = bytearray(base64.b64decode(obj["ciphertext"]))
    ciphertext[-1] ^= 1
    obj["ciphertext"] = protocol.b64e(bytes(ciphertext))
    raw = protocol.canonical_json(obj)
    resigned = protocol.SignedEnvelope(
        raw, net.rita.sign.sign(protocol.DOMAIN_ENVELOPE + raw).signature
    )
    error = only_error(post_signed(client, net.branch, batch(resigned)))
    assert error["code"] == "decrypt_failed"
    assert nothing_stored()


def test_an_envelope_for_another_node_is_refused(client, net):
    sealed = seal_from(net.rita, net.bob, recipient_node="other")
    error = only_error(post_signed(client, net.branch, batch(sealed)))
    assert error["code"] == "wrong_recipient_node"
    assert nothing_stored()


def test_an_unknown_recipient_is_refused(client, net):
    sealed = seal_from(net.rita, net.bob, recipient="nobody")
    assert only_error(post_signed(client, net.branch, batch(sealed)))["code"] == (
        "unknown_recipient"
    )
    assert nothing_stored()


def test_an_envelope_encrypted_to_someone_else_fails_to_decrypt(client, net):
    alice = make_local_person("alice")
    sealed = seal_from(net.rita, net.bob, recipient_box_key=bytes(alice.keys.box_public))
    assert only_error(post_signed(client, net.branch, batch(sealed)))["code"] == "decrypt_failed"
    assert nothing_stored()


@pytest.mark.parametrize(
    "payload",
    [{"text": ""}, {"text": "   \n"}, {"text": 5}, {"text": ["a"]}, {}, {"text": "a\x00b"}],
)
def test_a_message_payload_of_the_wrong_shape_is_refused(client, net, payload):
    sealed = seal_from(net.rita, net.bob, payload)
    assert only_error(post_signed(client, net.branch, batch(sealed)))["code"] == ("invalid_payload")
    assert nothing_stored()


def test_a_message_over_the_length_limit_is_refused(client, net, settings):
    settings.MESSAGE_MAX_CHARS = 10
    sealed = seal_from(net.rita, net.bob, {"text": "x" * 11})
    assert only_error(post_signed(client, net.branch, batch(sealed)))["code"] == ("invalid_payload")
    assert nothing_stored()


@pytest.mark.parametrize("payload", [{"ids": []}, {"ids": "x"}, {"ids": ["not-a-uuid"]}, {}])
def test_a_read_receipt_of_the_wrong_shape_is_refused(client, net, payload):
    sealed = seal_from(net.rita, net.bob, payload, kind="read")
    assert only_error(post_signed(client, net.branch, batch(sealed)))["code"] == ("invalid_payload")
    assert nothing_stored()


def test_the_same_id_with_other_bytes_is_refused_as_a_conflict(client, net):
    first = seal_from(net.rita, net.bob, {"text": "original"})
    post_signed(client, net.branch, batch(first))
    clash = seal_from(net.rita, net.bob, {"text": "replacement"}, envelope_id=first.id)
    error = only_error(post_signed(client, net.branch, batch(clash)))
    assert (error["code"], error["id"]) == ("id_conflict", first.id)
    assert list(Message.objects.values_list("text", flat=True)) == ["original"]


@pytest.mark.parametrize(
    ("entry_value", "code"),
    [
        ("a string", "invalid_field"),
        ({"body": "%%%", "sig": protocol.b64e(bytes(64))}, "invalid_field"),
        ({"body": protocol.b64e(b"{}")}, "missing_field"),
        ({"body": protocol.b64e(b"[1]"), "sig": protocol.b64e(bytes(64))}, "malformed_json"),
        ({"body": protocol.b64e(b'{"v":1}'), "sig": protocol.b64e(bytes(64))}, "missing_field"),
        ({"body": 7, "sig": protocol.b64e(bytes(64))}, "invalid_field"),
    ],
)
def test_a_malformed_entry_is_refused_alone(client, net, entry_value, code):
    body = json.dumps({"envelopes": [entry_value]}).encode()
    error = only_error(post_signed(client, net.branch, body))
    assert (error["index"], error["code"]) == (0, code)
    assert nothing_stored()


def test_an_oversized_envelope_is_refused_alone(client, net):
    sealed = seal_from(net.rita, net.bob, {"text": "x" * 60_000})
    error = only_error(post_signed(client, net.branch, batch(sealed)))
    assert error["code"] == "envelope_too_large"
    assert nothing_stored()


# --- whole-batch refusals: 4xx JSON and nothing written (not even the nonce) -----------------
@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "malformed_json"),
        (b'"a string"', "malformed_json"),
        (b"{}", "missing_field"),
        (b'{"envelopes": "x"}', "invalid_field"),
        (b'{"envelopes": []}', "empty_batch"),
    ],
)
def test_a_malformed_batch_is_refused_whole(client, net, body, code):
    response = post_signed(client, net.branch, body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code
    assert nothing_stored()
    assert not SeenNonce.objects.exists()


def test_a_batch_with_too_many_envelopes_is_refused(client, net):
    body = json.dumps({"envelopes": [{}] * (protocol.MAX_BATCH_ENVELOPES + 1)}).encode()
    response = post_signed(client, net.branch, body)
    assert (response.status_code, response.json()["error"]["code"]) == (413, "batch_too_large")
    assert nothing_stored()


def test_an_oversized_body_is_refused(client, net, settings):
    settings.PEER_MAX_BODY_BYTES = 1000
    body = batch(seal_from(net.rita, net.bob, {"text": "x" * 2000}))
    response = post_signed(client, net.branch, body)
    assert (response.status_code, response.json()["error"]["code"]) == (413, "body_too_large")
    assert nothing_stored()


def test_a_replayed_request_is_refused(client, net):
    body = batch(seal_from(net.rita, net.bob))
    nonce = "ab" * 16
    assert post_signed(client, net.branch, body, nonce=nonce).status_code == 200
    response = post_signed(client, net.branch, body, nonce=nonce)
    assert (response.status_code, response.json()["error"]["code"]) == (401, "replayed_nonce")
    assert Message.objects.count() == 1


def test_a_request_signed_by_another_key_is_refused(client, net):
    body = batch(seal_from(net.rita, net.bob))
    response = post_signed(client, net.branch, body, key=net.other.key)
    assert (response.status_code, response.json()["error"]["code"]) == (401, "bad_signature")
    assert nothing_stored()


def test_a_stale_request_is_refused(client, net):
    body = batch(seal_from(net.rita, net.bob))
    response = post_signed(client, net.branch, body, timestamp=1_000_000_000)
    assert (response.status_code, response.json()["error"]["code"]) == (401, "stale_timestamp")
    assert nothing_stored()


def test_a_timestamp_too_big_for_any_clock_is_refused_not_a_500(client, net):
    body = batch(seal_from(net.rita, net.bob))
    response = post_signed(client, net.branch, body, timestamp=10**400)
    assert (response.status_code, response.json()["error"]["code"]) == (401, "bad_auth_header")
    assert nothing_stored()


def test_a_lone_surrogate_in_the_batch_is_refused_not_a_500(client, net):
    response = post_signed(client, net.branch, b'{"envelopes":[],"x":"\\ud800"}')
    assert (response.status_code, response.json()["error"]["code"]) == (400, "malformed_json")
    assert nothing_stored()


def test_an_unsigned_request_is_refused(client, net):
    response = client.post(INBOX, data=batch(seal_from(net.rita, net.bob)), content_type="x")
    assert (response.status_code, response.json()["error"]["code"]) == (401, "missing_signature")
    assert nothing_stored()


def test_a_revoked_node_is_refused(client, net):
    net.branch.row.active = False
    net.branch.row.save()
    response = post_signed(client, net.branch, batch(seal_from(net.rita, net.bob)))
    assert (response.status_code, response.json()["error"]["code"]) == (403, "node_revoked")
    assert nothing_stored()


def test_a_get_is_refused(client, net):
    response = client.get(INBOX)
    assert (response.status_code, response.json()["error"]["code"]) == (405, "method_not_allowed")
