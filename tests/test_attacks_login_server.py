"""Attacks by a rogue login server (or anything on the path to it) against a node.

The node "hq" pins a login server key that the test holds; the attacker either lacks it
(an impostor, a path attacker replaying answers) or holds it (a compromised login server,
against which key and node changes must at least be visible). Answers are built byte by
byte (tests/helpers/rogue.py) and fetched over loopback or applied in process.

Already proven elsewhere (one line per attack, so this file reads as the complete list):
- A directory not signed by the pinned key, applied:
  test_directory_cache.test_a_directory_not_signed_by_the_pinned_key_is_refused_and_nothing_is_stored
- A record changed inside a correctly signed directory:
  test_directory_cache.test_a_tampered_record_is_rejected_and_the_old_copy_kept and
  test_a_record_for_a_user_not_yet_known_is_not_stored_when_tampered
- A replayed older directory (rolls back a revocation):
  test_directory_cache.test_a_replayed_older_directory_cannot_bring_a_revoked_node_back
- An unsigned 304, or one signed for another request (withholding updates):
  test_hardening_loginserver_node.test_an_unsigned_304_is_a_failed_fetch_and_the_next_fetch_gets_the_whole_directory,
  test_a_304_signed_for_another_request_is_refused
- A substituted key is flagged until acknowledged, and shown on the profile:
  test_directory_cache.test_a_key_change_is_flagged_until_the_viewer_acknowledges_it,
  test_the_profile_shows_the_fingerprint_and_a_key_change_warning
- A remote directory entry speaking with a local person's name:
  test_hardening_delivery_inbox.test_a_remote_sender_with_a_local_persons_name_is_refused_alone
- A login server that drips or floods its answer:
  test_delivery_limits.test_a_login_server_that_drips_or_floods_cannot_hold_the_directory_fetch
- An expired cached record, on use (sending to them, their envelopes, read receipts):
  test_hardening_accounts_records_in_use (whole file)
- An unsigned 200 to a key rotation: test_node_key_rotation
  .test_an_unsigned_ok_from_something_on_the_path_does_not_adopt_the_pending_key
"""

from __future__ import annotations

import re
import time

import pytest
from django.test import Client
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from accounts.models import User
from messaging.models import Outbox
from peers import directory, protocol, services
from peers.models import DirectorySync, DirectoryUser, NodeIdentity
from tests.helpers import rogue
from tests.helpers.accounts import logged_in
from tests.helpers.factories import make_person
from tests.helpers.messaging import join_local_node

pytestmark = pytest.mark.django_db


class Net:
    """hq (this node, pinning `login_server`), branch with carol, and the alice of hq."""

    def __init__(self) -> None:
        self.hq_key = join_local_node("hq")
        self.login_server = SigningKey.generate()
        NodeIdentity.objects.filter(pk=1).update(
            login_server_key=bytes(self.login_server.verify_key)
        )
        DirectorySync.objects.get_or_create(pk=1)
        self.branch = SigningKey.generate()
        self.carol_sign, self.carol_box = SigningKey.generate(), PrivateKey.generate()
        self.alice, self.alice_secret = make_person("alice")

    def nodes(self, *extra: dict) -> list[dict]:
        return [
            rogue.node_entry("hq", bytes(self.hq_key.verify_key)),
            rogue.node_entry("branch", bytes(self.branch.verify_key)),
            *extra,
        ]

    def carol(self, *, node: str = "branch", sign=None, box=None, **kw) -> dict:
        return rogue.user_entry(
            self.login_server,
            username="carol",
            node=node,
            sign_key=bytes((sign or self.carol_sign).verify_key),
            box_key=bytes((box or self.carol_box).public_key),
            **kw,
        )

    def apply(self, *, users: list[dict], nodes: list[dict] | None = None, key=None):
        body, signature = rogue.directory(
            key or self.login_server, nodes=nodes or self.nodes(), users=users
        )
        return services.apply_directory(body=body, signature=signature)


@pytest.fixture
def net() -> Net:
    n = Net()
    n.apply(users=[n.carol()])
    return n


def carol_keys() -> tuple[bytes, bytes]:
    carol = directory.lookup("carol")
    return bytes(carol.sign_key), bytes(carol.box_key)


# --- forged signatures, over the wire ---------------------------------------------------------
def _impostor_signed(net: Net) -> tuple[bytes, dict]:
    body, signature = rogue.directory(
        SigningKey.generate(), nodes=net.nodes(), users=[net.carol(sign=SigningKey.generate())]
    )
    return body, {"X-P2P-Signature": protocol.b64e(signature)}


def _unsigned(net: Net) -> tuple[bytes, dict]:
    body, _ = rogue.directory(net.login_server, nodes=net.nodes(), users=[])
    return body, {}


def _signature_of_another_answer(net: Net) -> tuple[bytes, dict]:
    _, genuine = rogue.directory(net.login_server, nodes=net.nodes(), users=[net.carol()])
    body, _ = rogue.directory(SigningKey.generate(), nodes=net.nodes(), users=[])
    return body, {"X-P2P-Signature": protocol.b64e(genuine)}


@pytest.mark.parametrize(
    ("forge", "code"),
    [
        (_impostor_signed, "bad_directory_signature"),
        (_unsigned, "invalid_field"),
        (_signature_of_another_answer, "bad_directory_signature"),
    ],
)
def test_a_directory_from_an_impostor_is_refused_whole_and_the_failure_shown(net, forge, code):
    before = carol_keys()
    with rogue.rogue_login_server() as impostor:
        NodeIdentity.objects.filter(pk=1).update(login_server_url=impostor.url)
        body, headers = forge(net)
        impostor.answer = rogue.CannedAnswer(200, {"ETag": '"forged"', **headers}, body)

        with pytest.raises(protocol.ProtocolError) as refused:
            services.fetch_directory()

    assert refused.value.code == code
    sync = DirectorySync.objects.get(pk=1)
    assert (sync.last_error, sync.etag) == (code, "")
    assert carol_keys() == before  # carol still has her keys and her place
    assert list(DirectoryUser.objects.values_list("username", flat=True)) == ["carol"]


# --- a substituted key for an existing person --------------------------------------------------
def test_a_substituted_key_is_shown_in_the_conversation_until_the_viewer_checks_it(net):
    alice = logged_in(Client(), "alice", net.alice_secret)
    assert "keys changed" not in alice.get("/chat/carol/").content.decode()
    old_fingerprint = protocol.fingerprint(*carol_keys())

    result = net.apply(users=[net.carol(sign=SigningKey.generate(), box=PrivateKey.generate())])

    assert result.keys_changed == ["carol"]
    page = alice.get("/chat/carol/").content.decode()
    assert "carol's keys changed recently" in page
    profile = alice.get("/people/carol/").content.decode()
    assert "security keys changed" in profile
    assert old_fingerprint not in profile
    assert protocol.fingerprint(*carol_keys()) in profile
    alice.post("/people/carol/verify-keys")
    assert "keys changed" not in alice.get("/chat/carol/").content.decode()
    # Every other person of hq still sees the warning until they check it themselves.
    bob, _ = make_person("bob")
    assert directory.key_change_pending(bob, "carol")


# --- a record for a person on the wrong node ---------------------------------------------------
def test_a_record_naming_a_node_the_directory_does_not_list_is_skipped(net):
    result = net.apply(users=[net.carol(node="ghost")])
    assert result.rejected == ["0"]
    assert directory.lookup("carol").node.name == "branch"  # the old copy is kept


def test_a_record_moving_a_known_person_to_another_node_is_shown_like_a_key_change(net):
    evil = SigningKey.generate()
    result = net.apply(
        users=[net.carol(node="evil")],
        nodes=net.nodes(rogue.node_entry("evil", bytes(evil.verify_key))),
    )
    assert directory.lookup("carol").node.name == "evil"  # the directory's word is applied
    assert result.keys_changed == ["carol"]
    assert directory.key_change_pending(net.alice, "carol")


def _place_bob_on_evil(net: Net) -> tuple[User, bytes]:
    """bob is a person of hq; a record signed by the login server puts "bob" on node evil,
    with an impostor's keys. Returns (bob, the impostor's fingerprint)."""
    bob, _ = make_person("bob")
    bob_here = rogue.user_entry(
        net.login_server,
        username="bob",
        node="hq",
        sign_key=bytes(bob.keys.sign_public),
        box_key=bytes(bob.keys.box_public),
    )
    net.apply(users=[net.carol(), bob_here])  # as the login server lists hq's report
    impostor_sign, impostor_box = SigningKey.generate(), PrivateKey.generate()
    net.apply(
        users=[
            net.carol(),
            rogue.user_entry(
                net.login_server,
                username="bob",
                node="evil",
                sign_key=bytes(impostor_sign.verify_key),
                box_key=bytes(impostor_box.public_key),
                full_name="Bob Impostor",
            ),
        ],
        nodes=net.nodes(rogue.node_entry("evil", bytes(SigningKey.generate().verify_key))),
    )
    return bob, protocol.fingerprint(
        bytes(impostor_sign.verify_key), bytes(impostor_box.public_key)
    )


def test_a_record_placing_one_of_this_nodes_people_elsewhere_does_not_take_them_over(net):
    bob, impostor_fingerprint = _place_bob_on_evil(net)
    alice = logged_in(Client(), "alice", net.alice_secret)

    # alice's messages to bob stay on this node, sealed to bob's own key.
    assert alice.post("/chat/bob/", {"text": "board minutes"}).status_code == 302
    assert list(Outbox.objects.values_list("destination", flat=True)) == ["hq"]
    # bob's profile, where people compare fingerprints, shows bob's own keys and office.
    profile = alice.get("/people/bob/").content.decode()
    assert protocol.fingerprint(bytes(bob.keys.sign_public), bytes(bob.keys.box_public)) in profile
    assert impostor_fingerprint not in profile
    assert "<dd>hq</dd>" in profile and "Bob Impostor" not in profile


def test_the_users_page_does_not_list_an_impostor_under_a_local_name(net):
    _place_bob_on_evil(net)
    alice = logged_in(Client(), "alice", net.alice_secret)
    page = alice.get("/users/").content.decode()
    assert "Bob Impostor" not in page
    assert not re.search(r'data-username="bob"(?:(?!</tr>).)*<td>evil</td>', page, re.S)


# --- an expired record ---------------------------------------------------------------------------
def test_an_expired_record_is_skipped_and_the_old_copy_kept(net):
    expired = int(time.time()) - 1
    dora = rogue.user_entry(
        net.login_server,
        username="dora",
        node="branch",
        sign_key=bytes(SigningKey.generate().verify_key),
        box_key=bytes(PrivateKey.generate().public_key),
        expires=expired,
    )
    before = carol_keys()

    result = net.apply(users=[net.carol(sign=SigningKey.generate(), expires=expired), dora])

    assert result.rejected == ["0", "1"]
    assert carol_keys() == before
    assert not directory.key_change_pending(net.alice, "carol")
    with pytest.raises(directory.UnknownUser):
        directory.lookup("dora")
