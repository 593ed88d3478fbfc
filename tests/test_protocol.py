"""Known-answer tests of peers.protocol: fixed keys, fixed nonces, exact bytes. No Django."""

from __future__ import annotations

import base64
import json

import pytest
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from peers import protocol
from peers.protocol import ProtocolError

SENDER_SIGN = SigningKey(bytes(range(32)))
SENDER_BOX = PrivateKey(bytes(range(32, 64)))
RECIPIENT_BOX = PrivateKey(bytes(range(64, 96)))
NODE_KEY = SigningKey(bytes(range(96, 128)))
OTHER_KEY = SigningKey(bytes(range(128, 160)))
ENVELOPE_ID = "00000000-0000-4000-8000-000000000001"
ZERO_NONCE = bytes(24)

EXPECTED_RAW = (
    b'{"ciphertext":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAcfRbi/EGY6zK6C5V4NfhBLyzdJ9Ye56RBMwxiPWLAegTqA==",'
    b'"created_ms":1700000000000,"id":"00000000-0000-4000-8000-000000000001","kind":"message",'
    b'"recipient":"bob","recipient_node":"branch","sender":"alice","sender_node":"hq","v":1}'
)
EXPECTED_ENVELOPE_SIG = (
    "5d21cc07fc6a1346db54c557a22e5473bb0faca47ab8e788a77fca553964698d"
    "77fda1900858c2c0608642562a2c3189111cb77aa14065aee9f72c65189f350e"
)
EXPECTED_SHA256 = "1efe5edd2a3d5e582111a979a44ddc1b24ca8bc6bd49e642d314ae3bbf002d3d"
EXPECTED_ACK_SIG = (
    "DqvDGkE3GD6mH4REIWnmzC574RKihFG/0ENuvMM5BWjVwJ79TCI6QbkdZLSVPp79NrOA/JhFKee0J7T4Uj+ECQ=="
)


def seal(**overrides) -> protocol.SignedEnvelope:
    args = dict(
        sender_sign_key=SENDER_SIGN,
        sender_box_key=SENDER_BOX,
        recipient_box_key=bytes(RECIPIENT_BOX.public_key),
        envelope_id=ENVELOPE_ID,
        kind="message",
        sender="alice",
        sender_node="hq",
        recipient="bob",
        recipient_node="branch",
        created_ms=1_700_000_000_000,
        payload={"text": "hi 👋"},
        nonce=ZERO_NONCE,
    )
    args.update(overrides)
    return protocol.seal_envelope(**args)


def entry(raw: bytes, sig: bytes) -> dict:
    return {"body": base64.b64encode(raw).decode(), "sig": base64.b64encode(sig).decode()}


def resign(obj: dict) -> tuple[bytes, bytes]:
    raw = protocol.canonical_json(obj)
    return raw, SENDER_SIGN.sign(protocol.DOMAIN_ENVELOPE + raw).signature


# --- canonical bytes and signatures ----------------------------------------------------
def test_it_seals_an_envelope_to_exact_canonical_bytes():
    assert seal().raw == EXPECTED_RAW


def test_it_signs_the_envelope_with_the_known_signature():
    assert seal().signature.hex() == EXPECTED_ENVELOPE_SIG


def test_envelope_signature_covers_the_domain_prefix():
    plain = SENDER_SIGN.sign(EXPECTED_RAW).signature
    assert plain.hex() != EXPECTED_ENVELOPE_SIG
    with pytest.raises(ProtocolError) as caught:
        protocol.verify_envelope(bytes(SENDER_SIGN.verify_key), EXPECTED_RAW, plain)
    assert caught.value.code == "bad_envelope_signature"


def test_it_verifies_the_known_envelope_signature():
    protocol.verify_envelope(
        bytes(SENDER_SIGN.verify_key), EXPECTED_RAW, bytes.fromhex(EXPECTED_ENVELOPE_SIG)
    )


def test_a_changed_byte_breaks_the_envelope_signature():
    tampered = EXPECTED_RAW.replace(b'"bob"', b'"bib"')
    with pytest.raises(ProtocolError) as caught:
        protocol.verify_envelope(
            bytes(SENDER_SIGN.verify_key), tampered, bytes.fromhex(EXPECTED_ENVELOPE_SIG)
        )
    assert caught.value.code == "bad_envelope_signature"


def test_another_key_does_not_verify_the_envelope():
    with pytest.raises(ProtocolError) as caught:
        protocol.verify_envelope(
            bytes(OTHER_KEY.verify_key), EXPECTED_RAW, bytes.fromhex(EXPECTED_ENVELOPE_SIG)
        )
    assert caught.value.code == "bad_envelope_signature"


def test_canonical_json_keeps_unicode_byte_exact():
    text = "👩\u200d💻 e\u0301 שלום"
    assert protocol.canonical_json({"b": 1, "a": text}) == ('{"a":"' + text + '","b":1}').encode(
        "utf-8"
    )


# --- encryption --------------------------------------------------------------------------
def test_it_decrypts_the_known_ciphertext_for_the_recipient():
    envelope = protocol.parse_envelope(EXPECTED_RAW)
    payload = protocol.open_envelope(
        envelope, recipient_box_key=RECIPIENT_BOX, sender_box_key=bytes(SENDER_BOX.public_key)
    )
    assert payload == {"text": "hi 👋"}


def test_the_known_ciphertext_is_the_fixed_nonce_then_the_box():
    envelope = protocol.parse_envelope(EXPECTED_RAW)
    assert envelope.ciphertext.hex() == (
        "000000000000000000000000000000000000000000000000"
        "71f45b8bf10663accae82e55e0d7e104bcb3749f587b9e9104cc3188f58b01e813a8"
    )


def test_unicode_payload_round_trips_byte_exact():
    text = "👨\u200d👩\u200d👧\u200d👦 a\u0301\u0308 مرحبا עברית \U0001f3f3\ufe0f\u200d\U0001f308"
    sealed = seal(payload={"text": text}, nonce=None)
    envelope = protocol.parse_envelope(sealed.raw)
    payload = protocol.open_envelope(
        envelope, recipient_box_key=RECIPIENT_BOX, sender_box_key=bytes(SENDER_BOX.public_key)
    )
    assert payload["text"].encode("utf-8") == text.encode("utf-8")


def test_modified_ciphertext_fails_to_decrypt():
    envelope = protocol.parse_envelope(EXPECTED_RAW)
    flipped = bytearray(envelope.ciphertext)
    flipped[-1] ^= 0x01
    obj = json.loads(EXPECTED_RAW)
    obj["ciphertext"] = base64.b64encode(bytes(flipped)).decode()
    raw, _ = resign(obj)
    with pytest.raises(ProtocolError) as caught:
        protocol.open_envelope(
            protocol.parse_envelope(raw),
            recipient_box_key=RECIPIENT_BOX,
            sender_box_key=bytes(SENDER_BOX.public_key),
        )
    assert caught.value.code == "decrypt_failed"


def test_another_recipient_cannot_decrypt():
    envelope = protocol.parse_envelope(EXPECTED_RAW)
    with pytest.raises(ProtocolError) as caught:
        protocol.open_envelope(
            envelope,
            recipient_box_key=PrivateKey(bytes(range(160, 192))),
            sender_box_key=bytes(SENDER_BOX.public_key),
        )
    assert caught.value.code == "decrypt_failed"


# --- envelope parsing --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"v": 2}, "unsupported_version"),
        ({"v": True}, "unsupported_version"),
        ({"id": "not-a-uuid"}, "invalid_field"),
        ({"id": "ABCDEF00-0000-4000-8000-000000000001"}, "invalid_field"),
        ({"kind": "poke"}, "invalid_field"),
        ({"created_ms": -1}, "invalid_field"),
        ({"created_ms": "1"}, "invalid_field"),
        ({"created_ms": 2**64}, "invalid_field"),
        ({"sender": "bad name!"}, "invalid_field"),
        ({"recipient_node": "UPPER"}, "invalid_field"),
        ({"ciphertext": "%%%"}, "invalid_field"),
        ({"sender": None}, "invalid_field"),
    ],
)
def test_a_malformed_envelope_is_refused_with_a_code(change, code):
    obj = json.loads(EXPECTED_RAW)
    obj.update(change)
    with pytest.raises(ProtocolError) as caught:
        protocol.parse_envelope(protocol.canonical_json(obj))
    assert caught.value.code == code


def test_an_envelope_without_a_field_is_refused():
    obj = json.loads(EXPECTED_RAW)
    del obj["recipient"]
    with pytest.raises(ProtocolError) as caught:
        protocol.parse_envelope(protocol.canonical_json(obj))
    assert caught.value.code == "missing_field"


def test_an_oversized_envelope_is_refused():
    with pytest.raises(ProtocolError) as caught:
        protocol.parse_envelope(b" " * 101, max_bytes=100)
    assert (caught.value.code, caught.value.status) == ("envelope_too_large", 413)


# --- requests ----------------------------------------------------------------------------
def test_request_signing_bytes_are_exact():
    assert protocol.request_signing_bytes(
        method="post",
        path="/api/v1/inbox",
        node="hq",
        timestamp=1_700_000_000,
        nonce="0" * 32,
        body=b"{}",
    ) == (
        b"p2psocial/v1/request\x00POST\n/api/v1/inbox\nhq\n1700000000\n"
        b"00000000000000000000000000000000\n"
        b"44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    )


def test_request_signature_is_the_known_header():
    header = protocol.sign_request(
        NODE_KEY,
        node="hq",
        method="POST",
        path="/api/v1/inbox",
        body=b"{}",
        timestamp=1_700_000_000,
        nonce="0" * 32,
    )
    assert header == (
        'P2P-Node node="hq",ts="1700000000",nonce="00000000000000000000000000000000",'
        'sig="DSbsWDpvVtd3OUP7dHdMZNBe832UzAabNQb91vRUHAeZoApe+VIB3WYoPN+T0eqSf06Weq4ru0JF1IlcWKRDDQ=="'
    )


def signed_auth(body: bytes = b"{}", path: str = "/api/v1/inbox") -> protocol.RequestAuth:
    header = protocol.sign_request(
        NODE_KEY,
        node="hq",
        method="POST",
        path=path,
        body=body,
        timestamp=1_700_000_000,
        nonce="0" * 32,
    )
    return protocol.parse_auth_header(header)


def test_a_signed_request_verifies_inside_the_window():
    protocol.verify_request(
        bytes(NODE_KEY.verify_key),
        signed_auth(),
        method="POST",
        path="/api/v1/inbox",
        body=b"{}",
        now=1_700_000_100,
    )


def test_a_request_with_another_body_is_refused():
    with pytest.raises(ProtocolError) as caught:
        protocol.verify_request(
            bytes(NODE_KEY.verify_key),
            signed_auth(),
            method="POST",
            path="/api/v1/inbox",
            body=b"{ }",
            now=1_700_000_000,
        )
    assert (caught.value.code, caught.value.status) == ("bad_signature", 401)


def test_a_request_for_another_path_is_refused():
    with pytest.raises(ProtocolError) as caught:
        protocol.verify_request(
            bytes(NODE_KEY.verify_key),
            signed_auth(),
            method="POST",
            path="/api/v1/report",
            body=b"{}",
            now=1_700_000_000,
        )
    assert caught.value.code == "bad_signature"


def test_a_stale_request_is_refused():
    with pytest.raises(ProtocolError) as caught:
        protocol.verify_request(
            bytes(NODE_KEY.verify_key),
            signed_auth(),
            method="POST",
            path="/api/v1/inbox",
            body=b"{}",
            now=1_700_000_301,
        )
    assert caught.value.code == "stale_timestamp"


@pytest.mark.parametrize(
    "header",
    [
        None,
        "Bearer abc",
        'P2P-Node node="hq"',
        'P2P-Node node="hq",ts="x",nonce="00000000000000000000000000000000",sig="AA=="',
        'P2P-Node node="hq",ts="1",nonce="nothex",sig="' + "A" * 86 + '=="',
    ],
)
def test_a_malformed_auth_header_is_refused(header):
    with pytest.raises(ProtocolError) as caught:
        protocol.parse_auth_header(header)
    assert caught.value.status == 401
    assert caught.value.code in {"missing_signature", "bad_auth_header"}


@pytest.mark.parametrize(
    "ts", ["1" + "0" * 400, "\u0661\u0667" + "\u0660" * 8, "-1", "+1700000000", " 1"]
)
def test_a_timestamp_that_is_not_plain_unix_seconds_is_refused(ts):
    """A 400-digit timestamp once overflowed float() in the window check: a 500."""
    header = f'P2P-Node node="hq",ts="{ts}",nonce="{"0" * 32}",sig="{protocol.b64e(bytes(64))}"'
    with pytest.raises(ProtocolError) as caught:
        protocol.parse_auth_header(header)
    assert (caught.value.code, caught.value.status) == ("bad_auth_header", 401)


@pytest.mark.parametrize(
    "body",
    [
        b'{"text":"\\ud800"}',
        b'{"\\uDFFF":1}',
        b'{"a":[{"b":"x\\udbffy"}]}',
        b'{"text":"\xed\xa0\x80"}',  # a surrogate encoded as UTF-8 bytes
        '{"text":"hi"}'.encode("utf-16"),
    ],
)
def test_a_lone_surrogate_in_json_is_refused_as_malformed(body):
    with pytest.raises(ProtocolError) as caught:
        protocol.parse_json_object(body)
    assert (caught.value.code, caught.value.status) == ("malformed_json", 400)


def test_an_escaped_surrogate_pair_is_ordinary_text():
    assert protocol.parse_json_object(b'{"a":"\\ud83d\\ude00"}') == {"a": "\U0001f600"}


# --- acknowledgements -------------------------------------------------------------------
def test_it_signs_the_known_acknowledgement():
    assert protocol.sign_ack(NODE_KEY, ENVELOPE_ID, EXPECTED_RAW) == {
        "id": ENVELOPE_ID,
        "status": "stored",
        "sha256": EXPECTED_SHA256,
        "sig": EXPECTED_ACK_SIG,
    }


def test_it_verifies_an_acknowledgement_for_the_sent_bytes():
    ack = protocol.sign_ack(NODE_KEY, ENVELOPE_ID, EXPECTED_RAW)
    protocol.verify_ack(bytes(NODE_KEY.verify_key), ack, envelope_id=ENVELOPE_ID, raw=EXPECTED_RAW)


def test_an_acknowledgement_for_other_bytes_is_refused():
    ack = protocol.sign_ack(NODE_KEY, ENVELOPE_ID, EXPECTED_RAW + b" ")
    with pytest.raises(ProtocolError) as caught:
        protocol.verify_ack(
            bytes(NODE_KEY.verify_key), ack, envelope_id=ENVELOPE_ID, raw=EXPECTED_RAW
        )
    assert caught.value.code == "bad_ack"


def test_an_acknowledgement_with_a_forged_hash_is_refused():
    ack = protocol.sign_ack(NODE_KEY, ENVELOPE_ID, EXPECTED_RAW + b" ")
    ack["sha256"] = EXPECTED_SHA256
    with pytest.raises(ProtocolError) as caught:
        protocol.verify_ack(
            bytes(NODE_KEY.verify_key), ack, envelope_id=ENVELOPE_ID, raw=EXPECTED_RAW
        )
    assert caught.value.code == "bad_ack"


def test_an_acknowledgement_by_another_node_is_refused():
    ack = protocol.sign_ack(OTHER_KEY, ENVELOPE_ID, EXPECTED_RAW)
    with pytest.raises(ProtocolError) as caught:
        protocol.verify_ack(
            bytes(NODE_KEY.verify_key), ack, envelope_id=ENVELOPE_ID, raw=EXPECTED_RAW
        )
    assert caught.value.code == "bad_ack"


@pytest.mark.parametrize("ack", [None, [], "x", {"id": ENVELOPE_ID}, {"status": "stored"}])
def test_a_malformed_acknowledgement_is_refused(ack):
    with pytest.raises(ProtocolError) as caught:
        protocol.verify_ack(
            bytes(NODE_KEY.verify_key), ack, envelope_id=ENVELOPE_ID, raw=EXPECTED_RAW
        )
    assert caught.value.code == "bad_ack"


# --- batches -----------------------------------------------------------------------------
def test_a_batch_encodes_base64_bodies_and_signatures():
    sealed = seal()
    body = protocol.encode_batch([sealed])
    assert json.loads(body) == {"envelopes": [entry(EXPECTED_RAW, sealed.signature)]}


def test_parse_batch_refuses_bad_entries_one_by_one():
    good = seal()
    obj = json.loads(EXPECTED_RAW)
    obj["kind"] = "poke"
    bad_raw, bad_sig = resign(obj)
    body = json.dumps(
        {
            "envelopes": [
                entry(good.raw, good.signature),
                "not an object",
                {"body": "%%%", "sig": entry(b"x", bytes(64))["sig"]},
                {"body": entry(good.raw, b"")["body"], "sig": "AAAA"},
                {"sig": entry(b"", good.signature)["sig"]},
                entry(bad_raw, bad_sig),
            ]
        }
    ).encode()
    items = protocol.parse_batch(body)
    assert [i.index for i in items] == [0, 1, 2, 3, 4, 5]
    assert items[0].error is None and items[0].envelope.id == ENVELOPE_ID
    assert [i.error.code for i in items[1:]] == [
        "invalid_field",
        "invalid_field",
        "invalid_field",
        "missing_field",
        "invalid_field",
    ]
    assert all(i.envelope is None for i in items[1:])


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "malformed_json"),
        (b"[]", "malformed_json"),
        (b"\xff\xfe", "malformed_json"),
        (b"{}", "missing_field"),
        (b'{"envelopes": {}}', "invalid_field"),
        (b'{"envelopes": []}', "empty_batch"),
    ],
)
def test_a_malformed_batch_is_refused_whole(body, code):
    with pytest.raises(ProtocolError) as caught:
        protocol.parse_batch(body)
    assert caught.value.code == code
    assert 400 <= caught.value.status < 500


def test_a_batch_with_too_many_envelopes_is_refused():
    sealed = seal()
    body = protocol.encode_batch([sealed] * 3)
    with pytest.raises(ProtocolError) as caught:
        protocol.parse_batch(body, max_envelopes=2)
    assert (caught.value.code, caught.value.status) == ("batch_too_large", 413)


# --- node key rotation ----------------------------------------------------------------------
EXPECTED_ROTATION_SIG = (
    "H4quuJVHjITygJwBviXiH9uPUf/4Mex23Qko1TJ6gx4AH+mDI5DuAzpfcFwFCEO/YPfvlSjREVI5oK+fDBjaDA=="
)


def test_rotation_signing_bytes_are_exact():
    new_key_b64 = protocol.b64e(bytes(OTHER_KEY.verify_key))
    assert new_key_b64 == "zRSzf5VulTGU/3+3Oz2B3MVh1hp1OAlLfD4aZD7l86o="
    assert protocol.rotation_signing_bytes(node="hq", new_key_b64=new_key_b64) == (
        b"p2psocial/v1/rotate-key\x00hq\nzRSzf5VulTGU/3+3Oz2B3MVh1hp1OAlLfD4aZD7l86o="
    )


def test_it_signs_the_known_rotation_proof():
    assert protocol.b64e(protocol.sign_rotation(OTHER_KEY, node="hq")) == EXPECTED_ROTATION_SIG


def test_it_verifies_the_known_rotation_proof():
    proof = base64.b64decode(EXPECTED_ROTATION_SIG)
    protocol.verify_rotation(bytes(OTHER_KEY.verify_key), proof, node="hq")


@pytest.mark.parametrize(
    ("new_key", "node"),
    [
        (bytes(NODE_KEY.verify_key), "hq"),  # signed by another key than the one announced
        (bytes(OTHER_KEY.verify_key), "branch"),  # a proof for hq does not rotate branch
        (bytes(31), "hq"),  # not a key at all
    ],
)
def test_a_rotation_proof_that_does_not_match_is_refused(new_key, node):
    proof = base64.b64decode(EXPECTED_ROTATION_SIG)
    with pytest.raises(ProtocolError) as caught:
        protocol.verify_rotation(new_key, proof, node=node)
    assert (caught.value.code, caught.value.status) == ("bad_proof", 400)


# --- request nonces -------------------------------------------------------------------------
def test_a_new_nonce_is_32_lower_case_hex_digits_and_fresh_each_time():
    first, second = protocol.new_nonce(), protocol.new_nonce()
    assert len(first) == 32 and set(first) <= set("0123456789abcdef")
    assert first != second
    header = protocol.sign_request(NODE_KEY, node="hq", method="GET", path="/", body=b"")
    assert len(protocol.parse_auth_header(header).nonce) == 32  # sign_request uses it


# --- the signed "directory unchanged" answer ------------------------------------------------
UNCHANGED_NONCE = "0" * 32
UNCHANGED_ETAG = '"0123456789abcdef0123456789abcdef"'
UNCHANGED_GENERATED_MS = 1_767_225_600_000
EXPECTED_UNCHANGED_SIG = (
    "ZFg4bLNwBGp9widI9CrufxSy2g53hapRHXc4RvTqIVR5jxvMBxOKdYfQdVVEJHqkBNC+6gRvYq49GeWAJly2AA=="
)


def unchanged(**overrides) -> dict:
    args = {
        "nonce": UNCHANGED_NONCE,
        "etag": UNCHANGED_ETAG,
        "generated_ms": UNCHANGED_GENERATED_MS,
    }
    args.update(overrides)
    return args


def test_directory_unchanged_signing_bytes_are_exact():
    assert protocol.directory_unchanged_signing_bytes(**unchanged()) == (
        b"p2psocial/v1/directory-unchanged\x00"
        b'00000000000000000000000000000000\n"0123456789abcdef0123456789abcdef"\n1767225600000'
    )


def test_it_signs_the_known_directory_unchanged_answer():
    signature = protocol.sign_directory_unchanged(NODE_KEY, **unchanged())
    assert protocol.b64e(signature) == EXPECTED_UNCHANGED_SIG


def test_it_verifies_the_known_directory_unchanged_answer():
    signature = base64.b64decode(EXPECTED_UNCHANGED_SIG)
    protocol.verify_directory_unchanged(bytes(NODE_KEY.verify_key), signature, **unchanged())


@pytest.mark.parametrize(
    "change",
    [
        {"nonce": "1" * 32},  # the answer to another request: a replay
        {"etag": '"ffffffffffffffffffffffffffffffff"'},
        {"generated_ms": UNCHANGED_GENERATED_MS + 1},
    ],
)
def test_a_directory_unchanged_answer_for_something_else_is_refused(change):
    signature = base64.b64decode(EXPECTED_UNCHANGED_SIG)
    with pytest.raises(ProtocolError) as caught:
        protocol.verify_directory_unchanged(
            bytes(NODE_KEY.verify_key), signature, **unchanged(**change)
        )
    assert caught.value.code == "bad_unchanged_signature"


def test_a_directory_signature_is_not_a_directory_unchanged_signature():
    message = protocol.directory_unchanged_signing_bytes(**unchanged())
    plain = protocol.sign_directory(NODE_KEY, message[len(protocol.DOMAIN_DIRECTORY_UNCHANGED) :])
    with pytest.raises(ProtocolError) as caught:
        protocol.verify_directory_unchanged(bytes(NODE_KEY.verify_key), plain, **unchanged())
    assert caught.value.code == "bad_unchanged_signature"


# --- node addresses -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("172.32.0.1", True),  # just outside 172.16/12
        ("2001:4860:4860::8888", True),
        ("::ffff:8.8.8.8", True),
        ("127.0.0.1", False),  # loopback
        ("127.1.2.3", False),
        ("::1", False),
        ("10.1.2.3", False),  # private
        ("172.16.0.1", False),
        ("172.31.255.255", False),
        ("192.168.1.1", False),
        ("fc00::1", False),
        ("fd12:3456::1", False),
        ("169.254.169.254", False),  # link-local (cloud metadata)
        ("fe80::1", False),
        ("fe80::1%eth0", False),
        ("0.0.0.0", False),  # unspecified
        ("::", False),
        ("224.0.0.1", False),  # multicast
        ("ff02::1", False),
        ("100.64.0.1", False),  # shared address space
        ("240.0.0.1", False),  # reserved
        ("fec0::1", False),  # site-local
        ("::ffff:127.0.0.1", False),  # IPv4-mapped loopback
        ("::ffff:10.0.0.1", False),
        ("2002:7f00:1::", False),  # 6to4 carrying 127.0.0.1
        ("2002:a00:1::", False),  # 6to4 carrying 10.0.0.1
        ("2002:5db8:d822::1", True),  # 6to4 carrying 93.184.216.34
        ("192.88.99.1", False),  # 6to4 relay anycast
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),  # Teredo
        ("localhost", False),  # not an address
        ("", False),
    ],
)
def test_only_public_addresses_are_allowed_for_node_urls(address, public):
    assert protocol.is_public_address(address) is public


# --- profiles ---------------------------------------------------------------------------
EXPECTED_PROFILE = (
    '{"description":"Numbers 📈\\nand people","full_name":"Carol Ng","location":"Zürich",'
    '"node":"branch","picture":{"mime":"image/png","sha256":"' + "ab" * 32 + '","size":4096},'
    '"position":"CFO","served_ms":1767225660000,"updated_ms":1767225600000,'
    '"username":"carol","v":1}'
).encode()
EXPECTED_PROFILE_SIG = (
    "HiBGzCcfW32ASVu0R0iSHZGGlC6uCf//1gp7SXsKK0Es3uLgfW8eNIJbBggrhXe3Hk1z+9pER0cpfJwDLJMZDQ=="
)


def profile_fields(**overrides) -> dict:
    fields = dict(
        username="carol",
        node="branch",
        full_name="Carol Ng",
        position="CFO",
        description="Numbers 📈\nand people",
        location="Zürich",
        updated_ms=1_767_225_600_000,
        picture=protocol.ProfilePicture(sha256="ab" * 32, size=4096, mime="image/png"),
        served_ms=1_767_225_660_000,
    )
    fields.update(overrides)
    return fields


def profile_with(**changes) -> bytes:
    """The known profile with fields changed (None: removed), as canonical JSON."""
    obj = json.loads(EXPECTED_PROFILE)
    for name, value in changes.items():
        if value is None:
            del obj[name]
        else:
            obj[name] = value
    return protocol.canonical_json(obj)


def test_it_makes_a_profile_of_exact_canonical_bytes():
    assert protocol.make_profile(**profile_fields()) == EXPECTED_PROFILE


def test_it_signs_the_known_profile_with_the_known_signature():
    signature = protocol.sign_profile(NODE_KEY, EXPECTED_PROFILE)
    assert protocol.b64e(signature) == EXPECTED_PROFILE_SIG
    assert signature == NODE_KEY.sign(b"p2psocial/v1/profile\x00" + EXPECTED_PROFILE).signature


def test_it_verifies_and_parses_the_known_profile():
    signature = base64.b64decode(EXPECTED_PROFILE_SIG)
    protocol.verify_profile(bytes(NODE_KEY.verify_key), EXPECTED_PROFILE, signature)
    parsed = protocol.parse_profile(EXPECTED_PROFILE)
    assert parsed.description == "Numbers 📈\nand people"
    assert parsed.picture == protocol.ProfilePicture(sha256="ab" * 32, size=4096, mime="image/png")
    assert (parsed.username, parsed.node, parsed.served_ms) == ("carol", "branch", 1767225660000)
    assert parsed.raw == EXPECTED_PROFILE


def test_a_profile_without_a_picture_carries_null():
    body = protocol.make_profile(**profile_fields(picture=None))
    assert b'"picture":null' in body
    assert protocol.parse_profile(body).picture is None


@pytest.mark.parametrize(
    ("key", "body"),
    [
        (OTHER_KEY, EXPECTED_PROFILE),  # another node's key
        (NODE_KEY, EXPECTED_PROFILE.replace(b"CFO", b"CEO")),  # one field changed
        (NODE_KEY, EXPECTED_PROFILE + b" "),  # the same JSON, other bytes
    ],
)
def test_a_profile_signature_verifies_only_the_signed_bytes_with_the_nodes_key(key, body):
    signature = base64.b64decode(EXPECTED_PROFILE_SIG)
    with pytest.raises(ProtocolError) as caught:
        protocol.verify_profile(bytes(key.verify_key), body, signature)
    assert caught.value.code == "bad_profile_signature"


def test_a_profile_signature_is_not_a_directory_or_envelope_signature():
    plain = NODE_KEY.sign(EXPECTED_PROFILE).signature
    envelope = NODE_KEY.sign(protocol.DOMAIN_ENVELOPE + EXPECTED_PROFILE).signature
    for signature in (plain, envelope):
        with pytest.raises(ProtocolError):
            protocol.verify_profile(bytes(NODE_KEY.verify_key), EXPECTED_PROFILE, signature)


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"v": 2}, "unsupported_version"),
        ({"v": True}, "unsupported_version"),
        ({"username": None}, "missing_field"),
        ({"served_ms": None}, "missing_field"),
        ({"extra": "x"}, "invalid_field"),
        ({"username": "anne@hq"}, "invalid_field"),
        ({"node": "Branch"}, "invalid_field"),
        ({"full_name": "x" * 151}, "invalid_field"),
        ({"full_name": "Carol\nNg"}, "invalid_field"),
        ({"position": 7}, "invalid_field"),
        ({"location": "Zürich\x00"}, "invalid_field"),
        ({"description": "x" * 4001}, "invalid_field"),
        ({"description": "bell\x07"}, "invalid_field"),
        ({"updated_ms": -1}, "invalid_field"),
        ({"updated_ms": 2**53}, "invalid_field"),
        ({"served_ms": "1767225660000"}, "invalid_field"),
        ({"served_ms": True}, "invalid_field"),
        ({"picture": "yes"}, "invalid_field"),
        ({"picture": {"sha256": "ab" * 32, "size": 1}}, "missing_field"),
        ({"picture": {"sha256": "AB" * 32, "size": 1, "mime": "image/png"}}, "invalid_field"),
        ({"picture": {"sha256": "ab" * 32, "size": 0, "mime": "image/png"}}, "invalid_field"),
        ({"picture": {"sha256": "ab" * 32, "size": 1, "mime": "image/svg+xml"}}, "invalid_field"),
        ({"picture": {"sha256": "ab" * 32, "size": 1, "mime": "text/html"}}, "invalid_field"),
        (
            {"picture": {"sha256": "ab" * 32, "size": 1, "mime": "image/png", "url": "x"}},
            "invalid_field",
        ),
        (
            {"picture": {"sha256": "ab" * 32, "size": 10 * 1024 * 1024 + 1, "mime": "image/png"}},
            "picture_too_large",
        ),
    ],
)
def test_a_malformed_profile_is_refused_with_a_code(changes, code):
    with pytest.raises(ProtocolError) as caught:
        protocol.parse_profile(profile_with(**changes))
    assert caught.value.code == code


def test_a_description_keeps_its_lines_and_tabs():
    body = profile_with(description="one\n\ttwo\nthree")
    assert protocol.parse_profile(body).description == "one\n\ttwo\nthree"


def test_a_picture_over_the_callers_limit_is_refused():
    with pytest.raises(ProtocolError) as caught:
        protocol.parse_profile(EXPECTED_PROFILE, max_picture_bytes=4095)
    assert caught.value.code == "picture_too_large"


def test_an_oversized_profile_is_refused_before_it_is_parsed():
    body = profile_with(description="x" * 4000) + b" " * protocol.MAX_PROFILE_BYTES
    with pytest.raises(ProtocolError) as caught:
        protocol.parse_profile(body)
    assert (caught.value.code, caught.value.status) == ("profile_too_large", 413)
