"""A cached user record is usable only within the lifetime the login server signed."""

from __future__ import annotations

import time

from nacl.signing import SigningKey

from peers import directory, protocol


def record(*, expires: int) -> bytes:
    """A user record as the login server signs it (peers.protocol.make_user_record)."""
    return protocol.make_user_record(
        username="bob",
        node="branch",
        node_url="https://branch.example",
        sign_key=bytes(SigningKey.generate().verify_key),
        box_key=bytes(32),
        full_name="Bob",
        position="",
        issued=expires - 3600,
        expires=expires,
    )


def test_a_record_within_its_lifetime_is_current():
    assert directory.record_is_current(record(expires=int(time.time()) + 3600))


def test_a_record_whose_expiry_is_in_the_past_is_not_current():
    assert not directory.record_is_current(record(expires=int(time.time()) - 1))


def test_a_record_is_current_up_to_its_expiry_second():
    assert directory.record_is_current(record(expires=1_700_000_000), now=1_700_000_000)
    assert not directory.record_is_current(record(expires=1_700_000_000), now=1_700_000_001)


def test_a_record_without_a_readable_expiry_is_not_current():
    assert not directory.record_is_current(b"{}")
    assert not directory.record_is_current(b'{"expires": "never"}')
    assert not directory.record_is_current(b'{"expires": true}')
    assert not directory.record_is_current(b"\xff")


def test_an_expired_record_is_refused_with_a_typed_error():
    error = directory.RecordExpired("bob")
    assert isinstance(error, protocol.ProtocolError)
    assert error.as_dict()["code"] == "record_expired"
    assert error.username == "bob"
