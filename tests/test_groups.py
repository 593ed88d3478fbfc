"""Groups on one node: its services, its peer inbox for group envelopes (real request
signatures, envelopes sealed as a remote node seals them) and its pages."""

from __future__ import annotations

import time
import uuid

import pytest
from nacl.signing import SigningKey

from messaging import group_messages, groups
from messaging.models import (
    Group,
    GroupDelivery,
    GroupMember,
    GroupRecord,
    Message,
    Outbox,
    ReceivedEnvelope,
)
from peers import groups as wire
from peers import protocol
from tests.helpers.messaging import (
    make_inbox_network,
    make_remote_person,
    post_signed,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def net():
    net = make_inbox_network("alice")
    net.nina = make_remote_person(net.branch, "nina")
    return net


def now_ms() -> int:
    return int(time.time() * 1000)


def post(client, node, *sealed):
    response = post_signed(client, node, protocol.encode_batch(list(sealed)))
    assert response.status_code == 200, response.content
    return response.json()


def codes(answer) -> list[str]:
    return [e["code"] for e in answer["errors"]]


class RemoteHome:
    """A group whose home is the remote node "branch": it numbers changes as branch's
    node would, and seals them to hq."""

    def __init__(self, net, admin, members):
        self.net, self.admin = net, admin
        self.create_id = str(uuid.uuid4())
        self.group = wire.group_id_for(admin.node.name, self.create_id)
        self.state = None
        self.heads: dict[int, str] = {}
        self.records: list[protocol.SignedEnvelope] = []
        self.change(
            admin,
            "create",
            name="Deal team",
            members=[wire.Member(u, n) for u, n in members],
        )

    def change(self, author, action, **fields):
        raw, sig = wire.make_event(
            author.sign,
            group=self.group,
            action=action,
            author=author.username,
            author_node=author.node.name,
            created_ms=now_ms(),
            event_id=self.create_id if action == "create" else None,
            **fields,
        )
        event = wire.parse_event(raw)
        record, record_sig, self.state = wire.number(
            self.state, event, home_sign_key=self.net.branch.key
        )
        self.heads[record.seq] = record.sha256
        sealed = protocol.sign_group_envelope(
            self.net.branch.key,
            envelope_id=protocol.new_envelope_id(),
            kind="group_record",
            sender="",
            sender_node="branch",
            recipient_node="hq",
            created_ms=now_ms(),
            body=wire.record_body(raw, sig, record.raw, record_sig),
        )
        self.records.append(sealed)
        return sealed

    def message(self, sender, text, *, to, at_seq=None, envelope_id=None):
        content = wire.seal_content(
            {"text": text},
            sender_box_key=sender.box,
            recipient_box_keys={u.username: bytes(u.keys.box_public) for u in to},
        )
        return protocol.sign_group_envelope(
            sender.sign,
            envelope_id=envelope_id or protocol.new_envelope_id(),
            kind="group_message",
            sender=sender.username,
            sender_node=sender.node.name,
            recipient_node="hq",
            created_ms=now_ms(),
            body=wire.message_body(
                group=self.group,
                message=str(uuid.uuid4()),
                at_seq=self.state.seq if at_seq is None else at_seq,
                head=self.heads[self.state.seq if at_seq is None else at_seq],
                ciphertext=content.ciphertext,
                wraps=content.wraps,
            ),
        )


def received_texts(user) -> list[str]:
    return list(
        Message.objects.filter(owner=user, direction="in", group__isnull=False)
        .order_by("id")
        .values_list("text", flat=True)
    )


# --- a group made here -----------------------------------------------------------------------
def test_creating_a_group_here_numbers_it_and_sends_its_first_change_to_the_other_office(net):
    group = groups.create_group(creator=net.alice, name="Board", usernames=["bob", "rita"])
    assert (group.home_node, group.seq, group.name) == ("hq", 1, "Board")
    members = {m.username: (m.node, m.admin) for m in GroupMember.objects.filter(group=group)}
    assert members == {"alice": ("hq", True), "bob": ("hq", False), "rita": ("branch", False)}
    rows = list(Outbox.objects.filter(kind="group_record"))
    assert [r.destination for r in rows] == ["branch"]  # hq's people need no envelope
    envelope = protocol.parse_envelope(bytes(rows[0].raw))
    protocol.verify_envelope(bytes(net.node_key.verify_key), envelope.raw, bytes(rows[0].signature))
    change = wire.parse_change_body(envelope.body, kind="group_record")
    wire.verify_sequence_record(
        bytes(net.node_key.verify_key), change.record.raw, change.record_sig
    )
    assert wire.apply(None, change.event, change.record).members.keys() == {
        "alice",
        "bob",
        "rita",
    }


def test_a_group_message_is_encrypted_once_and_its_key_sealed_to_each_recipient(net):
    group = groups.create_group(
        creator=net.alice, name="Board", usernames=["bob", "rita", "nina", "olga"]
    )
    message = group_messages.send_group_message(
        sender=net.alice, group=group, text="Numbers are in"
    )
    rows = {r.destination: r for r in Outbox.objects.filter(kind="group_message")}
    assert set(rows) == {"hq", "branch", "other"}  # one envelope per node
    bodies = {
        node: wire.parse_message_body(protocol.parse_envelope(bytes(r.raw)).body)
        for node, r in rows.items()
    }
    assert set(bodies["branch"].wraps) == {"rita", "nina"}
    assert set(bodies["other"].wraps) == {"olga"}
    assert set(bodies["hq"].wraps) == {"bob"}
    assert len({b.ciphertext for b in bodies.values()}) == 1  # encrypted once
    sender_box = bytes(net.alice.keys.box_public)
    for person in (net.rita, net.nina):
        opened = wire.open_content(
            bodies["branch"].ciphertext,
            bodies["branch"].wraps[person.username],
            recipient_box_key=person.box,
            sender_box_key=sender_box,
        )
        assert opened == {"text": "Numbers are in"}
    with pytest.raises(protocol.ProtocolError):  # olga's wrap is not rita's
        wire.open_content(
            bodies["other"].ciphertext,
            bodies["other"].wraps["olga"],
            recipient_box_key=net.rita.box,
            sender_box_key=sender_box,
        )
    recipients = set(GroupDelivery.objects.filter(message=message).values_list("username", "node"))
    assert recipients == {("bob", "hq"), ("rita", "branch"), ("nina", "branch"), ("olga", "other")}


def test_an_office_outside_the_group_is_sent_nothing(net):
    group = groups.create_group(creator=net.alice, name="Local", usernames=["bob"])
    group_messages.send_group_message(sender=net.alice, group=group, text="just us")
    assert set(Outbox.objects.values_list("destination", flat=True)) == {"hq"}


def test_adding_someone_unknown_to_the_directory_is_refused_and_nothing_is_written(net):
    with pytest.raises(groups.GroupError, match="nobody called 'ghost'"):
        groups.create_group(creator=net.alice, name="Board", usernames=["bob", "ghost"])
    assert not Group.objects.exists() and not Outbox.objects.exists()
    group = groups.create_group(creator=net.alice, name="Board", usernames=["bob"])
    with pytest.raises(groups.GroupError, match="nobody called 'ghost'"):
        groups.change_group(author=net.alice, group=group, action="add", usernames=["ghost"])
    assert Group.objects.get().seq == 1


def test_a_member_who_is_not_an_admin_cannot_change_the_group(net):
    group = groups.create_group(creator=net.alice, name="Board", usernames=["bob", "rita"])
    with pytest.raises(groups.GroupError, match="Only the group's admins"):
        groups.change_group(author=net.bob, group=group, action="rename", name="Mine now")
    assert Group.objects.get().name == "Board"


def test_a_removed_member_receives_nothing_sent_after_and_their_office_is_told(net):
    group = groups.create_group(creator=net.alice, name="Board", usernames=["bob", "rita"])
    Outbox.objects.all().delete()
    groups.change_group(author=net.alice, group=group, action="remove", usernames=["rita"])
    told = [
        protocol.parse_envelope(bytes(r.raw)) for r in Outbox.objects.filter(kind="group_record")
    ]
    assert [e.recipient_node for e in told] == ["branch"]
    change = wire.parse_change_body(told[0].body, kind="group_record")
    assert (change.event.action, [m.username for m in change.event.members]) == (
        "remove",
        ["rita"],
    )
    group_messages.send_group_message(sender=net.alice, group=Group.objects.get(), text="after")
    destinations = set(
        Outbox.objects.filter(kind="group_message").values_list("destination", flat=True)
    )
    assert destinations == {"hq"}
    assert set(GroupDelivery.objects.values_list("username", flat=True)) == {"bob"}


@pytest.mark.parametrize(
    "name",
    ["line\nbreak", "bell\x07", "\u0085next line", "", "   ", "x" * 101],
)
def test_a_name_that_is_not_one_printable_line_is_refused(net, name):
    with pytest.raises(groups.GroupError, match="1 to 100 characters"):
        groups.create_group(creator=net.alice, name=name, usernames=["bob"])
    assert not Group.objects.exists()


# --- the inbox: a group whose home is another office ----------------------------------------
def test_records_from_the_home_office_build_the_group_and_its_messages_arrive(client, net):
    home = RemoteHome(net, net.rita, [("alice", "hq"), ("bob", "hq"), ("nina", "branch")])
    answer = post(client, net.branch, home.records[0])
    assert codes(answer) == [] and len(answer["acks"]) == 1
    group = Group.objects.get()
    assert (group.home_node, group.name, group.seq) == ("branch", "Deal team", 1)
    sealed = home.message(net.rita, "Term sheet attached", to=[net.alice, net.bob])
    answer = post(client, net.branch, sealed)
    assert codes(answer) == []
    protocol.verify_ack(
        bytes(net.node_key.verify_key), answer["acks"][0], envelope_id=sealed.id, raw=sealed.raw
    )
    assert received_texts(net.alice) == ["Term sheet attached"]
    assert received_texts(net.bob) == ["Term sheet attached"]
    again = post(client, net.branch, sealed)  # its acknowledgement was lost: sent again
    assert codes(again) == [] and received_texts(net.alice) == ["Term sheet attached"]


def test_a_message_from_a_removed_member_is_refused_even_if_written_before(client, net):
    home = RemoteHome(net, net.rita, [("alice", "hq"), ("nina", "branch")])
    late = home.message(net.nina, "written before my removal", to=[net.alice])
    home.change(net.rita, "remove", members=[wire.Member("nina", "branch")])
    assert codes(post(client, net.branch, *home.records)) == []
    assert codes(post(client, net.branch, late)) == ["not_a_member"]
    fresh = home.message(net.nina, "after my removal", to=[net.alice])
    assert codes(post(client, net.branch, fresh)) == ["not_a_member"]
    assert received_texts(net.alice) == []


def test_an_envelope_naming_someone_who_is_not_a_member_is_refused_whole(client, net):
    home = RemoteHome(net, net.rita, [("alice", "hq")])
    post(client, net.branch, *home.records)
    sealed = home.message(net.rita, "for bob too", to=[net.alice, net.bob])
    assert codes(post(client, net.branch, sealed)) == ["recipient_not_a_member"]
    assert (
        received_texts(net.alice) == []
        and not ReceivedEnvelope.objects.filter(kind="group_message").exists()
    )


def test_a_change_that_arrives_before_the_one_it_follows_waits(client, net):
    home = RemoteHome(net, net.rita, [("alice", "hq")])
    second = home.change(net.rita, "rename", name="Renamed")
    third = home.change(net.rita, "add", members=[wire.Member("bob", "hq")])
    assert codes(post(client, net.branch, home.records[0])) == []
    assert codes(post(client, net.branch, third)) == ["group_behind"]  # retried by branch
    assert Group.objects.get().seq == 1
    assert codes(post(client, net.branch, second, third)) == []
    group = Group.objects.get()
    assert (group.seq, group.name) == (3, "Renamed")
    assert groups.is_member(group, "bob")


def test_a_replayed_change_is_acknowledged_and_applied_once(client, net):
    home = RemoteHome(net, net.rita, [("alice", "hq")])
    home.change(net.rita, "add", members=[wire.Member("bob", "hq")])
    post(client, net.branch, *home.records)
    assert codes(post(client, net.branch, *home.records)) == []  # the same envelopes
    # The same numbered changes under new envelope ids (the home node sent them again).
    body = protocol.parse_envelope(home.records[1].raw).body
    resent = protocol.sign_group_envelope(
        net.branch.key,
        envelope_id=protocol.new_envelope_id(),
        kind="group_record",
        sender="",
        sender_node="branch",
        recipient_node="hq",
        created_ms=now_ms(),
        body=body,
    )
    assert codes(post(client, net.branch, resent)) == []
    assert GroupRecord.objects.count() == 2
    assert GroupMember.objects.filter(username="bob").count() == 1


def test_a_different_change_under_a_number_already_applied_is_refused(client, net):
    home = RemoteHome(net, net.rita, [("alice", "hq")])
    home.change(net.rita, "rename", name="First")
    post(client, net.branch, *home.records)
    fork = RemoteHome.__new__(RemoteHome)
    fork.net, fork.group, fork.records = net, home.group, []
    fork.state, fork.heads = None, {}
    # Branch numbers another change 2 after create: a forked history.
    event = wire.parse_event(
        protocol.b64d(protocol.parse_envelope(home.records[0].raw).body["event"], field="event")
    )
    record = wire.parse_sequence_record(
        protocol.b64d(protocol.parse_envelope(home.records[0].raw).body["record"], field="r")
    )
    fork.state = wire.apply(None, event, record)
    forked = fork.change(net.rita, "rename", name="Second")
    assert codes(post(client, net.branch, forked)) == ["group_chain_broken"]
    assert Group.objects.get().name == "First"


def test_a_change_from_another_office_than_the_home_is_refused(client, net):
    home = RemoteHome(net, net.rita, [("alice", "hq"), ("olga", "other")])
    post(client, net.branch, home.records[0])
    rename = home.change(net.rita, "rename", name="Hijacked")
    relayed = protocol.sign_group_envelope(
        net.other.key,
        envelope_id=protocol.new_envelope_id(),
        kind="group_record",
        sender="",
        sender_node="other",
        recipient_node="hq",
        created_ms=now_ms(),
        body=protocol.parse_envelope(rename.raw).body,
    )
    assert codes(post(client, net.other, relayed)) == ["not_home_node"]
    assert Group.objects.get().name == "Deal team"


# --- the inbox: this node is the home ---------------------------------------------------------
def event_envelope(author, group_id, action, **fields):
    raw, sig = wire.make_event(
        author.sign,
        group=group_id,
        action=action,
        author=author.username,
        author_node=author.node.name,
        created_ms=now_ms(),
        **fields,
    )
    return protocol.sign_group_envelope(
        author.sign,
        envelope_id=protocol.new_envelope_id(),
        kind="group_event",
        sender=author.username,
        sender_node=author.node.name,
        recipient_node="hq",
        created_ms=now_ms(),
        body=wire.event_body(raw, sig),
    )


def test_an_event_signed_by_a_member_who_is_not_an_admin_is_refused(client, net):
    group = groups.create_group(creator=net.alice, name="Board", usernames=["rita"])
    sealed = event_envelope(net.rita, str(group.group_id), "rename", name="Rita's now")
    assert codes(post(client, net.branch, sealed)) == ["not_an_admin"]
    assert Group.objects.get().name == "Board"


def test_an_admin_elsewhere_changes_the_group_through_its_home(client, net):
    group = groups.create_group(creator=net.alice, name="Board", usernames=["rita", "bob"])
    groups.change_group(author=net.alice, group=group, action="promote", usernames=["rita"])
    Outbox.objects.all().delete()
    sealed = event_envelope(
        net.rita, str(group.group_id), "add", members=[wire.Member("nina", "branch")]
    )
    assert codes(post(client, net.branch, sealed)) == []
    group.refresh_from_db()
    assert group.seq == 3 and groups.is_member(group, "nina") is False  # nina is on branch
    assert GroupMember.objects.filter(username="nina", node="branch", left_seq=None).exists()
    records = [
        protocol.parse_envelope(bytes(r.raw)) for r in Outbox.objects.filter(kind="group_record")
    ]
    assert {e.recipient_node for e in records} == {"branch"}


def test_an_event_adding_someone_unknown_to_the_directory_is_refused(client, net):
    group = groups.create_group(creator=net.alice, name="Board", usernames=["rita"])
    groups.change_group(author=net.alice, group=group, action="promote", usernames=["rita"])
    sealed = event_envelope(
        net.rita, str(group.group_id), "add", members=[wire.Member("ghost", "branch")]
    )
    assert codes(post(client, net.branch, sealed)) == ["unknown_member"]
    assert not GroupMember.objects.filter(username="ghost").exists()


@pytest.mark.parametrize(
    ("count", "code"), [(10_000, "envelope_too_large"), (300, "too_many_members")]
)
def test_an_event_with_too_many_members_is_refused(client, net, count, code):
    group = groups.create_group(creator=net.alice, name="Board", usernames=["rita"])
    groups.change_group(author=net.alice, group=group, action="promote", usernames=["rita"])
    body = {
        "v": 1,
        "group": str(group.group_id),
        "id": str(uuid.uuid4()),
        "action": "add",
        "author": "rita",
        "author_node": "branch",
        "created_ms": now_ms(),
        "members": [{"username": f"p{i}", "node": "branch"} for i in range(count)],
    }
    raw = protocol.canonical_json(body)
    sig = net.rita.sign.sign(wire.DOMAIN_GROUP_EVENT + raw).signature
    envelope = {
        "v": 1,
        "id": protocol.new_envelope_id(),
        "kind": "group_event",
        "sender": "rita",
        "sender_node": "branch",
        "recipient_node": "hq",
        "created_ms": now_ms(),
        "body": wire.event_body(raw, sig),
    }
    envelope_raw = protocol.canonical_json(envelope)
    sealed = protocol.SignedEnvelope(
        envelope_raw, net.rita.sign.sign(protocol.DOMAIN_ENVELOPE + envelope_raw).signature
    )
    assert codes(post(client, net.branch, sealed)) == [code]
    assert GroupMember.objects.count() == 2


def test_a_form_with_ten_thousand_names_is_refused_with_a_clear_error(net):
    with pytest.raises(groups.GroupError, match="at most 256 members"):
        groups.create_group(
            creator=net.alice, name="Everyone", usernames=[f"p{i}" for i in range(10_000)]
        )
    assert not Group.objects.exists()


def test_a_forged_event_signature_is_refused(client, net):
    group = groups.create_group(creator=net.alice, name="Board", usernames=["rita"])
    groups.change_group(author=net.alice, group=group, action="promote", usernames=["rita"])
    raw, _ = wire.make_event(
        SigningKey.generate(),
        group=str(group.group_id),
        action="rename",
        author="rita",
        author_node="branch",
        created_ms=now_ms(),
        name="Forged",
    )
    sealed = protocol.sign_group_envelope(
        net.rita.sign,
        envelope_id=protocol.new_envelope_id(),
        kind="group_event",
        sender="rita",
        sender_node="branch",
        recipient_node="hq",
        created_ms=now_ms(),
        body=wire.event_body(raw, bytes(64)),
    )
    assert codes(post(client, net.branch, sealed)) == ["bad_event_signature"]
    assert Group.objects.get().name == "Board"


# --- acknowledgements and receipts ----------------------------------------------------------
def test_per_member_delivery_and_read_state(client, net):
    group = groups.create_group(creator=net.alice, name="Board", usernames=["bob", "rita", "nina"])
    message = group_messages.send_group_message(sender=net.alice, group=group, text="hello all")
    from django.utils import timezone

    branch_row = Outbox.objects.get(kind="group_message", destination="branch")
    group_messages.acknowledged([branch_row], now=timezone.now())
    assert group_messages.delivery_summary([message.id])[message.id] == {
        "total": 3,
        "delivered": 2,
        "read": 0,
        "failed": 0,
    }
    receipt = protocol.sign_group_envelope(
        net.rita.sign,
        envelope_id=protocol.new_envelope_id(),
        kind="group_read",
        sender="rita",
        sender_node="branch",
        recipient_node="hq",
        created_ms=now_ms(),
        body=wire.read_body(
            group=str(group.group_id), author="alice", ids=[str(message.group_message_id)]
        ),
    )
    assert codes(post(client, net.branch, receipt)) == []
    summary = group_messages.delivery_summary([message.id])[message.id]
    assert (summary["delivered"], summary["read"]) == (2, 1)
    group_messages.refused(
        [Outbox.objects.get(kind="group_message", destination="hq")], "expired", now=timezone.now()
    )
    message.refresh_from_db()
    assert message.status == "failed"
    assert group_messages.delivery_summary([message.id])[message.id]["failed"] == 1
    group_messages.retry_member(owner=net.alice, message_id=message.id, username="bob")
    assert group_messages.delivery_summary([message.id])[message.id]["failed"] == 0


def test_reading_a_group_sends_one_receipt_per_author_office(client, net):
    home = RemoteHome(net, net.rita, [("alice", "hq"), ("nina", "branch")])
    post(client, net.branch, *home.records)
    post(client, net.branch, home.message(net.rita, "one", to=[net.alice]))
    post(client, net.branch, home.message(net.nina, "two", to=[net.alice]))
    group = Group.objects.get()
    assert group_messages.mark_group_read(viewer=net.alice, group=group) == 2
    receipts = [
        protocol.parse_envelope(bytes(r.raw)) for r in Outbox.objects.filter(kind="group_read")
    ]
    assert sorted(wire.parse_read_body(e.body).author for e in receipts) == ["nina", "rita"]
    assert group_messages.mark_group_read(viewer=net.alice, group=group) == 0


def test_someone_nobody_could_seal_to_is_not_counted_delivered_and_retry_reaches_them(net):
    from django.utils import timezone

    from peers.models import DirectoryUser

    group = groups.create_group(creator=net.alice, name="Board", usernames=["rita", "nina"])
    entry = DirectoryUser.objects.get(username="nina")
    DirectoryUser.objects.filter(username="nina").delete()  # gone from the directory
    message = group_messages.send_group_message(sender=net.alice, group=group, text="hi")
    assert message.status == "failed"  # one recipient could not be sealed to
    row = Outbox.objects.get(kind="group_message", destination="branch")
    assert group_messages._wrapped(row) == ["rita"]
    group_messages.acknowledged([row], now=timezone.now())
    states = dict(
        GroupDelivery.objects.filter(message=message).values_list("username", "delivered_at")
    )
    assert states["rita"] is not None and states["nina"] is None
    assert group_messages.delivery_summary([message.id])[message.id]["failed"] == 1
    Outbox.objects.filter(id=row.id).delete()  # acknowledged rows go

    with pytest.raises(groups.errors.NotRetryable, match="still cannot be reached"):
        group_messages.retry_member(owner=net.alice, message_id=message.id, username="nina")
    entry.pk = None
    entry.save()  # listed again
    group_messages.retry_member(owner=net.alice, message_id=message.id, username="nina")
    fresh = Outbox.objects.get(kind="group_message", destination="branch")
    assert group_messages._wrapped(fresh) == ["nina"]
    body = wire.parse_message_body(protocol.parse_envelope(bytes(fresh.raw)).body)
    assert body.message == str(message.group_message_id)
    opened = wire.open_content(
        body.ciphertext,
        body.wraps["nina"],
        recipient_box_key=net.nina.box,
        sender_box_key=bytes(net.alice.keys.box_public),
    )
    assert opened == {"text": "hi"}


def test_removing_nobody_says_to_choose_someone(net):
    group = groups.create_group(creator=net.alice, name="Board", usernames=["bob"])
    with pytest.raises(groups.GroupError, match="Choose a member first"):
        groups.change_group(author=net.alice, group=group, action="remove", usernames=[])


def test_a_later_change_of_a_group_not_known_yet_waits_for_the_first(client, net):
    home = RemoteHome(net, net.rita, [("alice", "hq")])
    second = home.change(net.rita, "rename", name="Second")
    assert codes(post(client, net.branch, second)) == ["group_behind"]  # retried by branch
    assert codes(post(client, net.branch, home.records[0], second)) == []
    assert Group.objects.get().name == "Second"


def test_a_new_node_key_signs_the_groups_records_again(net):
    from peers.identity import node_key_rotated
    from peers.models import NodeIdentity

    group = groups.create_group(creator=net.alice, name="Board", usernames=["rita"])
    waiting = Outbox.objects.get(kind="group_record")
    new_key = SigningKey.generate()
    node_key_rotated.send(sender=NodeIdentity, key=new_key)
    record = GroupRecord.objects.get(group=group)
    wire.verify_sequence_record(
        bytes(new_key.verify_key), bytes(record.record_raw), bytes(record.record_sig)
    )
    row = Outbox.objects.get(id=waiting.id)
    protocol.verify_envelope(bytes(new_key.verify_key), bytes(row.raw), bytes(row.signature))
    change = wire.parse_change_body(
        protocol.parse_envelope(bytes(row.raw)).body, kind="group_record"
    )
    wire.verify_sequence_record(bytes(new_key.verify_key), change.record.raw, change.record_sig)
    assert row.earlier_sealings == [protocol.b64e(bytes(waiting.raw))]


def test_a_change_too_large_for_one_envelope_is_refused_with_words(net):
    from tests.helpers.messaging import make_remote_node

    far = make_remote_node("o" * 63)  # the longest office name
    names = [make_remote_person(far, f"{'x' * 146}{n:04d}").username for n in range(250)]
    with pytest.raises(groups.GroupError, match="Too many people at once"):
        groups.create_group(creator=net.alice, name="Everyone", usernames=names)
    assert not Group.objects.exists() and not Outbox.objects.exists()


# --- from the review: duplicates, squatting, forks, races --------------------------------------
def test_a_message_sent_again_under_a_new_envelope_is_stored_once_and_blocks_nothing(client, net):
    from tests.helpers.messaging import seal_from

    home = RemoteHome(net, net.rita, [("alice", "hq"), ("bob", "hq")])
    post(client, net.branch, *home.records)
    first = home.message(net.rita, "once", to=[net.alice, net.bob])
    body = protocol.parse_envelope(first.raw).body
    again = protocol.sign_group_envelope(  # the same message, a new envelope (a Retry)
        net.rita.sign,
        envelope_id=protocol.new_envelope_id(),
        kind="group_message",
        sender="rita",
        sender_node="branch",
        recipient_node="hq",
        created_ms=now_ms(),
        body=body,
    )
    one_to_one = seal_from(net.rita, net.bob, {"text": "and a direct one"})
    assert codes(post(client, net.branch, first, again, one_to_one)) == []
    assert received_texts(net.alice) == ["once"] and received_texts(net.bob) == ["once"]
    assert codes(post(client, net.branch, again)) == []
    assert Message.objects.filter(text="once").count() == 2  # alice's copy and bob's
    assert Message.objects.filter(text="and a direct one").count() == 1


def test_another_office_cannot_present_a_group_as_its_own(client, net):
    home = RemoteHome(net, net.rita, [("alice", "hq"), ("olga", "other")])
    raw, sig = wire.make_event(  # "other" claims home's group id for a create of its own
        net.olga.sign,
        group=home.group,
        action="create",
        author="olga",
        author_node="other",
        created_ms=now_ms(),
        name="Deal team",
        members=[wire.Member("alice", "hq")],
    )
    record_raw, record_sig = wire.make_sequence_record(
        net.other.key, group=home.group, seq=1, event_raw=raw, prev=""
    )
    squat = protocol.sign_group_envelope(
        net.other.key,
        envelope_id=protocol.new_envelope_id(),
        kind="group_record",
        sender="",
        sender_node="other",
        recipient_node="hq",
        created_ms=now_ms(),
        body=wire.record_body(raw, sig, record_raw, record_sig),
    )
    assert codes(post(client, net.other, squat)) == ["group_mismatch"]
    assert codes(post(client, net.branch, home.records[0])) == []
    assert Group.objects.get().home_node == "branch"


def test_a_message_from_another_history_of_the_group_is_refused(client, net):
    home = RemoteHome(net, net.rita, [("alice", "hq")])
    post(client, net.branch, *home.records)
    sealed = home.message(net.rita, "from a fork", to=[net.alice])
    body = dict(protocol.parse_envelope(sealed.raw).body, head="0" * 64)
    forked = protocol.sign_group_envelope(
        net.rita.sign,
        envelope_id=protocol.new_envelope_id(),
        kind="group_message",
        sender="rita",
        sender_node="branch",
        recipient_node="hq",
        created_ms=now_ms(),
        body=body,
    )
    assert codes(post(client, net.branch, forked)) == ["group_chain_broken"]
    assert received_texts(net.alice) == []


def test_a_change_applied_between_the_check_and_the_store_refuses_the_batch(net):
    from messaging import receiving
    from peers.auth import KnownNode

    home = RemoteHome(net, net.rita, [("alice", "hq"), ("nina", "branch")])
    items = protocol.parse_batch(protocol.encode_batch(home.records))
    receiving.accept_envelopes(
        items, from_node=KnownNode("branch", bytes(net.branch.key.verify_key), None)
    )
    late = home.message(net.nina, "written before my removal", to=[net.alice])
    checked = receiving.check_envelopes(
        protocol.parse_batch(protocol.encode_batch([late])),
        from_node=KnownNode("branch", bytes(net.branch.key.verify_key), None),
    )
    assert checked.refusals == []
    removal = home.change(net.rita, "remove", members=[wire.Member("nina", "branch")])
    receiving.accept_envelopes(
        protocol.parse_batch(protocol.encode_batch([removal])),
        from_node=KnownNode("branch", bytes(net.branch.key.verify_key), None),
    )
    with pytest.raises(protocol.ProtocolError) as caught:
        receiving.store_envelopes(batch=checked)
    assert caught.value.code == "conflict"
    assert received_texts(net.alice) == []


def test_a_copy_for_someone_removed_here_well_before_it_was_written_is_not_stored(client, net):
    from datetime import timedelta

    from django.utils import timezone

    home = RemoteHome(net, net.rita, [("alice", "hq"), ("bob", "hq")])
    at_seq = 1
    home.change(net.rita, "remove", members=[wire.Member("bob", "hq")])
    post(client, net.branch, *home.records)
    GroupMember.objects.filter(username="bob").update(
        left_at=timezone.now() - timedelta(minutes=10)
    )
    # Written by an office still at change 1 (it had not heard of the removal).
    sealed = home.message(net.rita, "after bob left", to=[net.alice, net.bob], at_seq=at_seq)
    assert codes(post(client, net.branch, sealed)) == []
    assert received_texts(net.alice) == ["after bob left"]
    assert received_texts(net.bob) == []


def test_resealing_for_someone_nobody_can_reach_now_shows_them_failed(net):
    from django.utils import timezone

    from peers.models import DirectoryUser

    group = groups.create_group(creator=net.alice, name="Board", usernames=["rita", "nina"])
    message = group_messages.send_group_message(sender=net.alice, group=group, text="hi")
    row = Outbox.objects.get(kind="group_message", destination="branch")
    DirectoryUser.objects.filter(username="nina").delete()
    assert group_messages.reseal([row], now=timezone.now()) == [row]
    assert group_messages._wrapped(Outbox.objects.get(id=row.id)) == ["rita"]
    errors = dict(GroupDelivery.objects.filter(message=message).values_list("username", "error"))
    assert errors == {"rita": "", "nina": "unknown_recipient"}


def test_the_conversation_retry_does_not_touch_a_group_message(net):
    from django.utils import timezone

    from messaging import sending

    group = groups.create_group(creator=net.alice, name="Board", usernames=["rita"])
    message = group_messages.send_group_message(sender=net.alice, group=group, text="hi")
    group_messages.refused(
        list(Outbox.objects.filter(kind="group_message")), "expired", now=timezone.now()
    )
    with pytest.raises(groups.errors.NotRetryable):
        sending.retry_message(owner=net.alice, message_id=message.id)


def test_adding_more_than_a_group_holds_is_refused_with_words(net):
    group = groups.create_group(creator=net.alice, name="Board", usernames=["bob"])
    with pytest.raises(groups.GroupError, match="at most 256 members"):
        groups.change_group(
            author=net.alice, group=group, action="add", usernames=[f"p{i}" for i in range(257)]
        )
