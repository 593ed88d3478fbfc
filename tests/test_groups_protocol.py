"""The groups protocol layer (peers/groups.py), on its own: signed changes, the home node's
numbering and the one order every node applies them in, who may send, and a message's
content encrypted once with its key sealed to each member.

No node sends these yet; these tests pin the rules the wiring will rest on."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from peers import groups
from peers.groups import Member
from peers.protocol import ProtocolError

CREATE_ID = str(uuid.UUID(int=7))
GROUP = groups.group_id_for("hq", CREATE_ID)  # alice of hq creates it
HOME = SigningKey(b"h" * 32)
PEOPLE = {  # username: (node, signing key)
    "alice": ("hq", SigningKey(b"a" * 32)),
    "bob": ("hq", SigningKey(b"b" * 32)),
    "carol": ("branch", SigningKey(b"c" * 32)),
    "dave": ("branch", SigningKey(b"d" * 32)),
    "erin": ("paris", SigningKey(b"e" * 32)),
}


def member(username: str) -> Member:
    return Member(username, PEOPLE[username][0])


def event(author: str, action: str, *, name: str | None = None, members=()) -> groups.GroupEvent:
    node, key = PEOPLE[author]
    raw, signature = groups.make_event(
        key,
        group=GROUP,
        action=action,
        author=author,
        author_node=node,
        created_ms=1_700_000_000_000,
        name=name,
        members=[member(m) for m in members],
        event_id=CREATE_ID if action == "create" else None,
    )
    groups.verify_event(bytes(key.verify_key), raw, signature)
    return groups.parse_event(raw)


def created(*members: str) -> groups.GroupState:
    _, _, state = groups.number(
        None, event("alice", "create", name="Board", members=members), home_sign_key=HOME
    )
    return state


def then(state, author: str, action: str, **fields) -> groups.GroupState:
    _, _, after = groups.number(state, event(author, action, **fields), home_sign_key=HOME)
    return after


def refused(code: str, state, author: str, action: str, **fields) -> None:
    with pytest.raises(ProtocolError) as caught:
        then(state, author, action, **fields)
    assert caught.value.code == code


def test_a_group_is_made_and_changed_by_its_admins():
    state = created("bob", "carol")
    assert state.name == "Board" and state.home_node == "hq" and state.seq == 1
    assert {u: (m.node, m.admin) for u, m in state.members.items()} == {
        "alice": ("hq", True),
        "bob": ("hq", False),
        "carol": ("branch", False),
    }
    state = then(state, "alice", "promote", members=["carol"])
    state = then(state, "carol", "add", members=["erin"])  # carol is an admin now
    state = then(state, "carol", "rename", name="Board & deal team")
    state = then(state, "alice", "remove", members=["bob"])
    assert state.seq == 5 and state.name == "Board & deal team"
    assert sorted(state.members) == ["alice", "carol", "erin"]
    assert state.members["erin"].joined_seq == 3 and state.left_at == {"bob": 5}
    assert groups.recipients(state, sender="carol") == {"hq": ["alice"], "paris": ["erin"]}


def test_an_event_signed_by_a_non_admin_is_refused_and_changes_nothing():
    state = created("bob", "carol")
    refused("not_an_admin", state, "bob", "add", members=["erin"])
    refused("not_an_admin", state, "bob", "remove", members=["alice"])
    refused("not_an_admin", state, "bob", "rename", name="Mine now")
    refused("not_a_member", state, "erin", "add", members=["dave"])
    assert state.seq == 1 and sorted(state.members) == ["alice", "bob", "carol"]


def test_an_event_with_a_forged_signature_does_not_verify():
    raw, _ = groups.make_event(
        PEOPLE["bob"][1],
        group=GROUP,
        action="leave",
        author="bob",
        author_node="hq",
        created_ms=1,
    )
    forged = PEOPLE["erin"][1].sign(groups.DOMAIN_GROUP_EVENT + raw).signature
    with pytest.raises(ProtocolError) as caught:
        groups.verify_event(bytes(PEOPLE["bob"][1].verify_key), raw, forged)
    assert caught.value.code == "bad_event_signature"


def test_a_member_leaves_and_the_group_keeps_an_admin():
    state = then(created("bob", "carol"), "alice", "add", members=["dave"])
    state = then(state, "bob", "leave")
    assert "bob" not in state.members
    state = then(state, "alice", "leave")  # the last admin: the longest-standing member heirs
    assert state.members["carol"].admin and not state.members["dave"].admin
    refused("last_admin", state, "carol", "demote", members=["carol"])


def test_a_removed_member_can_send_nothing_more_and_a_late_one_nothing_earlier():
    state = created("bob", "carol")
    groups.check_message(state, sender="bob", sender_node="hq", at_seq=1)
    removed = then(state, "alice", "remove", members=["bob"])
    for at_seq in (1, 2):  # written before the removal, or claiming to be after it
        with pytest.raises(ProtocolError) as caught:
            groups.check_message(removed, sender="bob", sender_node="hq", at_seq=at_seq)
        assert caught.value.code == "not_a_member"
    added = then(removed, "alice", "add", members=["erin"])
    with pytest.raises(ProtocolError) as caught:  # erin cannot write into the past
        groups.check_message(added, sender="erin", sender_node="paris", at_seq=2)
    assert caught.value.code == "not_a_member"
    groups.check_message(added, sender="erin", sender_node="paris", at_seq=3)
    assert "bob" not in {
        u for users in groups.recipients(added, sender="alice").values() for u in users
    }
    with pytest.raises(ProtocolError) as caught:  # a node behind the sender
        groups.check_message(removed, sender="alice", sender_node="hq", at_seq=3)
    assert caught.value.code == "group_behind"


def test_a_member_claimed_by_another_node_is_not_them():
    state = created("bob", "carol")
    with pytest.raises(ProtocolError) as caught:
        groups.check_message(state, sender="bob", sender_node="branch", at_seq=1)
    assert caught.value.code == "not_a_member"


def records(*changes) -> tuple[groups.GroupState, list]:
    """Number changes at the home node: (final state, [(record, event)])."""
    state, numbered = None, []
    for author, action, fields in changes:
        e = event(author, action, **fields)
        record, signature, state = groups.number(state, e, home_sign_key=HOME)
        groups.verify_sequence_record(bytes(HOME.verify_key), record.raw, signature)
        numbered.append((record, e))
    return state, numbered


def test_a_replayed_or_reordered_or_unchained_change_is_refused():
    final, numbered = records(
        ("alice", "create", {"name": "Board", "members": ["bob"]}),
        ("alice", "add", {"members": ["carol"]}),
        ("alice", "remove", {"members": ["bob"]}),
    )
    (r1, e1), (r2, e2), (r3, e3) = numbered
    one = groups.apply(None, e1, r1)
    for state, (record, e) in ((one, (r1, e1)), (one, (r3, e3)), (final, (r2, e2))):
        with pytest.raises(ProtocolError) as caught:
            groups.apply(state, e, record)
        assert caught.value.code in ("group_out_of_order", "group_exists")
    with pytest.raises(ProtocolError) as caught:  # a record naming another event
        groups.apply(one, e3, r2)
    assert caught.value.code == "group_chain_broken"
    # a record that skips the chain: right number, wrong prev
    raw, _ = groups.make_sequence_record(HOME, group=GROUP, seq=2, event_raw=e2.raw, prev="0" * 64)
    with pytest.raises(ProtocolError) as caught:
        groups.apply(one, e2, groups.parse_sequence_record(raw))
    assert caught.value.code == "group_out_of_order"


def test_a_member_list_of_ten_thousand_names_is_refused():
    body = (
        b'{"action":"add","author":"alice","author_node":"hq","created_ms":1,"group":"'
        + GROUP.encode()
        + b'","id":"'
        + str(uuid.uuid4()).encode()
        + b'","members":['
        + b",".join(b'{"node":"hq","username":"u%d"}' % i for i in range(10_000))
        + b'],"v":1}'
    )
    with pytest.raises(ProtocolError) as caught:
        groups.parse_event(body)
    assert caught.value.code == "event_too_large"
    small = [Member(f"u{i}", "hq") for i in range(groups.MAX_GROUP_MEMBERS + 1)]
    with pytest.raises(ProtocolError) as caught:
        groups.make_event(
            PEOPLE["alice"][1],
            group=GROUP,
            action="add",
            author="alice",
            author_node="hq",
            created_ms=1,
            members=small,
        )
    assert caught.value.code == "too_many_members"


@pytest.mark.parametrize("name", ["Board\x00", "Board\nsecret", "\u0085x", "   ", "x" * 101])
def test_a_name_with_control_characters_or_too_long_is_refused(name):
    with pytest.raises(ProtocolError) as caught:
        event("alice", "rename", name=name)
    assert caught.value.code == "invalid_field"


def test_a_name_with_html_is_text():
    state = then(created("bob"), "alice", "rename", name="<script>alert(1)</script> & co")
    assert state.name == "<script>alert(1)</script> & co"


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(sorted(PEOPLE)),
            st.sampled_from(["add", "remove", "promote", "demote", "leave", "rename"]),
            st.lists(st.sampled_from(sorted(PEOPLE)), min_size=1, max_size=3, unique=True),
        ),
        max_size=25,
    ),
    st.randoms(use_true_random=False),
)
def test_every_node_ends_with_the_same_state_whatever_order_the_changes_reach_it(changes, rng):
    """Admins on several offices change the group at once; the home node numbers what
    holds when it arrives. Each other node gets the numbered changes in any order, some
    twice, and applies each when its turn comes: all end with the home node's state."""
    first = event("alice", "create", name="Board", members=["bob", "carol"])
    record, _, home_state = groups.number(None, first, home_sign_key=HOME)
    log = [(record, first)]
    for author, action, targets in changes:
        if action == "rename":
            fields = {"name": f"name by {author}"}
        else:
            fields = {} if action == "leave" else {"members": targets}
        change = event(author, action, **fields)
        try:
            record, _, home_state = groups.number(home_state, change, home_sign_key=HOME)
        except ProtocolError:
            continue  # refused by the home node: numbered for nobody
        log.append((record, change))
    for _replica in range(3):
        arrivals = log + rng.sample(log, k=min(3, len(log)))
        rng.shuffle(arrivals)
        state, waiting = None, {}
        for record, e in arrivals:
            waiting[record.seq] = (record, e)
            while (state.seq if state else 0) + 1 in waiting:
                record_, e_ = waiting.pop((state.seq if state else 0) + 1)
                state = groups.apply(state, e_, record_)
        assert state == home_state


def test_a_message_is_encrypted_once_and_each_member_opens_it_with_their_own_key():
    sender = PrivateKey(b"s" * 32)
    keys = {name: PrivateKey(bytes([i + 1]) * 32) for i, name in enumerate(["carol", "dave"])}
    payload = {"text": "Board pack attached", "group": GROUP, "seq": 3}
    sealed = groups.seal_content(
        payload,
        sender_box_key=sender,
        recipient_box_keys={n: bytes(k.public_key) for n, k in keys.items()},
    )
    wraps = groups.decode_wraps(groups.encode_wraps(sealed.wraps))
    assert sorted(wraps) == ["carol", "dave"]
    for name, key in keys.items():
        opened = groups.open_content(
            sealed.ciphertext,
            wraps[name],
            recipient_box_key=key,
            sender_box_key=bytes(sender.public_key),
        )
        assert opened == payload
    outsider = PrivateKey(b"o" * 32)  # someone given carol's wrap
    tampered = sealed.ciphertext[:-1] + bytes([sealed.ciphertext[-1] ^ 1])
    for ciphertext, wrap, key in (
        (sealed.ciphertext, wraps["carol"], outsider),
        (sealed.ciphertext, wraps["carol"], keys["dave"]),
        (tampered, wraps["carol"], keys["carol"]),
    ):
        with pytest.raises(ProtocolError) as caught:
            groups.open_content(
                ciphertext, wrap, recipient_box_key=key, sender_box_key=bytes(sender.public_key)
            )
        assert caught.value.code == "decrypt_failed"
