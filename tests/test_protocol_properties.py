"""Property-based tests of peers/protocol.py: whatever bytes a peer or the login server
sends, and however a valid message is changed on the way, the protocol either accepts it
exactly as the valid original or refuses it with a typed ProtocolError; never another
exception. The examples are drawn from a fixed seed, so a failure reproduces; raise
P2P_PROPERTY_EXAMPLES to search harder locally."""

from __future__ import annotations

import json
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from peers import protocol

EXAMPLES = int(os.environ.get("P2P_PROPERTY_EXAMPLES", "200"))
PROPERTIES = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

SENDER_SIGN = SigningKey(bytes(range(32)))
SENDER_BOX = PrivateKey(bytes(range(1, 33)))
RECIPIENT_BOX = PrivateKey(bytes(range(2, 34)))
NODE_KEY = SigningKey(bytes(range(3, 35)))
LOGIN_KEY = SigningKey(bytes(range(4, 36)))
NOW = 1_800_000_000

VALID = protocol.seal_envelope(
    sender_sign_key=SENDER_SIGN,
    sender_box_key=SENDER_BOX,
    recipient_box_key=bytes(RECIPIENT_BOX.public_key),
    envelope_id="0b6f7c1e-52a4-4f53-9f0e-7d0d8f3c2a11",
    kind="message",
    sender="alice",
    sender_node="hq",
    recipient="carol",
    recipient_node="branch",
    created_ms=1_700_000_000_000,
    payload={"text": "Bonjour 👋"},
    nonce=bytes(24),
)
RECORD = protocol.make_user_record(
    username="alice",
    node="hq",
    node_url="https://hq.example.com",
    sign_key=bytes(SENDER_SIGN.verify_key),
    box_key=bytes(SENDER_BOX.public_key),
    full_name="Alice Martin",
    position="CEO",
    issued=NOW - 60,
    expires=NOW + 3600,
)
RECORD_SIG = protocol.sign_user_record(LOGIN_KEY, RECORD)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)


@st.composite
def mutations(draw, original: bytes) -> bytes:
    """original with one byte changed, removed, inserted, or cut at some point."""
    position = draw(st.integers(min_value=0, max_value=len(original) - 1))
    how = draw(st.sampled_from(["flip", "remove", "insert", "cut"]))
    if how == "flip":
        bit = 1 << draw(st.integers(min_value=0, max_value=7))
        return original[:position] + bytes([original[position] ^ bit]) + original[position + 1 :]
    if how == "remove":
        return original[:position] + original[position + 1 :]
    if how == "insert":
        return original[:position] + draw(st.binary(min_size=1, max_size=4)) + original[position:]
    return original[:position]


def refused_or_exact(check, value, original) -> None:
    """check(value) either raises ProtocolError or value is the original itself."""
    try:
        check(value)
    except protocol.ProtocolError as error:
        assert error.code and 400 <= error.status < 500
        return
    assert value == original, "a changed message was accepted"


# --- any bytes --------------------------------------------------------------------------------
@PROPERTIES
@given(st.binary(max_size=300))
def test_any_bytes_are_a_json_object_or_a_typed_refusal(body):
    try:
        assert isinstance(protocol.parse_json_object(body), dict)
    except protocol.ProtocolError as error:
        assert error.code == "malformed_json"


@PROPERTIES
@given(st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_any_body_is_an_envelope_or_a_typed_refusal(body):
    try:
        envelope = protocol.parse_envelope(body)
    except protocol.ProtocolError:
        return
    assert envelope.raw == body


@PROPERTIES
@given(json_values)
def test_any_json_is_a_batch_of_items_or_a_typed_refusal(value):
    try:
        items = protocol.parse_batch(json.dumps(value).encode())
    except protocol.ProtocolError:
        return
    assert items and all((i.envelope is None) != (i.error is None) for i in items)


@PROPERTIES
@given(st.text(max_size=200) | st.none())
def test_any_authorization_header_is_parsed_or_refused_with_401(header):
    try:
        auth = protocol.parse_auth_header(header)
    except protocol.ProtocolError as error:
        assert error.status == 401
        return
    assert len(auth.signature) == 64


@PROPERTIES
@given(json_values)
def test_any_value_is_base64_bytes_or_a_typed_refusal(value):
    try:
        assert isinstance(protocol.b64d(value, field="f"), bytes)
    except protocol.ProtocolError as error:
        assert error.code == "invalid_field"


# --- a valid message, changed on the way -------------------------------------------------------
def _envelope_check(raw: bytes) -> None:
    envelope = protocol.parse_envelope(raw)
    protocol.verify_envelope(bytes(SENDER_SIGN.verify_key), raw, VALID.signature)
    protocol.open_envelope(
        envelope, recipient_box_key=RECIPIENT_BOX, sender_box_key=bytes(SENDER_BOX.public_key)
    )


def test_the_valid_envelope_is_accepted():
    _envelope_check(VALID.raw)


@PROPERTIES
@given(mutations(VALID.raw))
def test_a_changed_envelope_is_refused(raw):
    refused_or_exact(_envelope_check, raw, VALID.raw)


@PROPERTIES
@given(mutations(VALID.signature))
def test_a_changed_envelope_signature_is_refused(signature):
    def check(sig: bytes) -> None:
        protocol.verify_envelope(bytes(SENDER_SIGN.verify_key), VALID.raw, sig)

    refused_or_exact(check, signature, VALID.signature)


@PROPERTIES
@given(mutations(protocol.encode_batch([VALID])))
def test_a_changed_batch_is_refused_or_refuses_its_envelope(body):
    try:
        items = protocol.parse_batch(body)
    except protocol.ProtocolError:
        return
    for item in items:
        if item.envelope is not None:
            refused_or_exact(
                lambda raw, sig=item.signature: protocol.verify_envelope(
                    bytes(SENDER_SIGN.verify_key), raw, sig
                ),
                item.envelope.raw,
                VALID.raw,
            )


ACK = protocol.sign_ack(NODE_KEY, protocol.parse_envelope(VALID.raw).id, VALID.raw)


@PROPERTIES
@given(
    st.sampled_from(sorted(ACK)),
    json_values | st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
)
def test_a_changed_acknowledgement_is_refused(field, value):
    changed = {**ACK, field: value}

    def check(ack: dict) -> None:
        protocol.verify_ack(bytes(NODE_KEY.verify_key), ack, envelope_id=ACK["id"], raw=VALID.raw)

    refused_or_exact(check, changed, ACK)


@PROPERTIES
@given(mutations(RECORD))
def test_a_changed_user_record_is_refused(record):
    def check(raw: bytes) -> None:
        protocol.verify_user_record(bytes(LOGIN_KEY.verify_key), raw, RECORD_SIG, now=NOW)

    refused_or_exact(check, record, RECORD)


@PROPERTIES
@given(json_values)
def test_any_record_the_login_server_signed_parses_or_is_refused(value):
    """Even a signed record is input: a login server bug must not crash a node."""
    body = json.dumps(value).encode()
    try:
        protocol.verify_user_record(
            bytes(LOGIN_KEY.verify_key), body, protocol.sign_user_record(LOGIN_KEY, body), now=NOW
        )
    except protocol.ProtocolError:
        pass


DIRECTORY = protocol.canonical_json({"users": [], "generated_ms": NOW * 1000})


@PROPERTIES
@given(mutations(DIRECTORY))
def test_a_changed_directory_is_refused(body):
    signature = protocol.sign_directory(LOGIN_KEY, DIRECTORY)
    refused_or_exact(
        lambda b: protocol.verify_directory(bytes(LOGIN_KEY.verify_key), b, signature),
        body,
        DIRECTORY,
    )


REQUEST = {"method": "POST", "path": "/api/v1/inbox", "body": b'{"envelopes":[]}'}
REQUEST_AUTH = protocol.parse_auth_header(
    protocol.sign_request(NODE_KEY, node="hq", timestamp=NOW, nonce="0" * 32, **REQUEST)
)


@PROPERTIES
@given(
    st.sampled_from(["method", "path", "body"]),
    st.text(max_size=30) | st.binary(max_size=30),
)
def test_a_signed_request_changed_on_the_way_is_refused(part, value):
    changed = dict(REQUEST)
    changed[part] = value.encode() if part == "body" and isinstance(value, str) else value
    if part != "body" and isinstance(value, bytes):
        changed[part] = value.decode("latin-1")

    def check(request: dict) -> None:
        protocol.verify_request(bytes(NODE_KEY.verify_key), REQUEST_AUTH, now=NOW, **request)

    # HTTP methods are compared case-blind: "post" is the same request as "POST".
    if part == "method" and isinstance(changed["method"], str):
        changed["method"] = changed["method"].upper()
    refused_or_exact(check, changed, REQUEST)
