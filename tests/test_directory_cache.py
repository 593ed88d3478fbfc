"""The node's directory cache, presence and pages, against the real login server code
in one database (no HTTP): records signed by the login server, verified by the node."""

import json
from datetime import timedelta

import pytest
from django.utils import timezone
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.plugins.otp_totp.models import TOTPDevice
from nacl.signing import SigningKey

from accounts.crypto import encrypt_at_rest
from accounts.models import User, UserSession
from loginserver import directory as ls_directory
from loginserver import services as ls
from loginserver.models import Node
from peers import directory, presence, protocol, queries, services
from peers.models import DirectorySync, DirectoryUser, NodeIdentity, PeerNode
from tests.helpers.factories import make_person

pytestmark = pytest.mark.django_db


def enrol(name: str) -> Node:
    key = SigningKey.generate()
    url = f"http://127.0.0.1:81{len(name):02d}"
    _, token = ls.create_enrolment_token(node_name=name)
    proof = protocol.sign_enrolment(key, token=token, name=name, url=url)
    return ls.enrol_node(
        token=token, name=name, url=url, sign_key=bytes(key.verify_key), proof=proof
    )


def join_as(name: str = "hq") -> Node:
    """Enrol `name` at the login server and make this database that node."""
    node = enrol(name)
    key = SigningKey.generate()
    NodeIdentity.objects.create(
        pk=1,
        name=name,
        public_url=node.url,
        sign_public=bytes(key.verify_key),
        sign_private_encrypted=encrypt_at_rest(bytes(key)),
        login_server_url="http://127.0.0.1:9",
        login_server_key=bytes(ls.server_signing_key().verify_key),
    )
    return node


def person(username: str, status: str = "online", key: int = 1, **kw) -> ls.ReportedUser:
    return ls.ReportedUser(
        username=username,
        sign_key=bytes([key]) * 32,
        box_key=bytes([key + 100]) * 32,
        full_name=kw.get("full_name", username.title()),
        position=kw.get("position", "Director"),
        status=status,
        last_seen=kw.get("last_seen", 1_700_000_000),
    )


def report(node: Node, *users: ls.ReportedUser) -> None:
    node.refresh_from_db()  # as the signed endpoint's resolver loads it per request
    ls.accept_report(node=node, report=ls.Report(url=None, users=list(users)))


def directory_answer() -> tuple[bytes, bytes]:
    snap = ls_directory.snapshot()
    return snap.body, protocol.b64d(snap.signature, field="sig")


def sync() -> services.ApplyResult:
    body, signature = directory_answer()
    result = services.apply_directory(body=body, signature=signature)
    DirectorySync.objects.update_or_create(pk=1, defaults={"last_success_at": timezone.now()})
    return result


def tamper(body: bytes, index: int, change) -> bytes:
    obj = json.loads(body)
    record = json.loads(protocol.b64d(obj["users"][index]["record"], field="r"))
    change(record)
    obj["users"][index]["record"] = protocol.b64e(protocol.canonical_json(record))
    return protocol.canonical_json(obj)


# --- the cache ------------------------------------------------------------------------
def test_it_caches_every_node_and_user_of_the_directory():
    hq = join_as("hq")
    branch = enrol("branch")
    report(hq, person("alice"))
    report(branch, person("carol", "away"))
    result = sync()
    assert result.users == 2 and result.rejected == []
    carol = directory.lookup("carol")
    assert (carol.node.name, carol.status, carol.full_name) == ("branch", "away", "Carol")
    assert bytes(carol.sign_key) == bytes([1]) * 32
    assert set(PeerNode.objects.values_list("name", flat=True)) == {"hq", "branch"}


def test_a_directory_not_signed_by_the_pinned_key_is_refused_and_nothing_is_stored():
    hq = join_as("hq")
    report(hq, person("alice"))
    body, _ = directory_answer()
    forged = SigningKey.generate()
    with pytest.raises(protocol.ProtocolError) as refused:
        services.apply_directory(body=body, signature=protocol.sign_directory(forged, body))
    assert refused.value.code == "bad_directory_signature"
    assert not DirectoryUser.objects.exists()


def test_a_tampered_record_is_rejected_and_the_old_copy_kept():
    hq = join_as("hq")
    report(hq, person("alice"), person("bob"))
    sync()
    body, _ = directory_answer()

    def swap_key(record):
        record["sign_key"] = protocol.b64e(bytes([66]) * 32)

    forged_body = tamper(body, 0, swap_key)
    # The attacker controls the directory transport but not the login server's record key:
    # even with a valid outer signature (a compromised cache, say) the record must fail.
    outer = protocol.sign_directory(ls.server_signing_key(), forged_body)
    result = services.apply_directory(body=forged_body, signature=outer)
    assert result.rejected == ["0"]
    alice = directory.lookup("alice")
    assert bytes(alice.sign_key) == bytes([1]) * 32
    assert alice.keys_changed_at is None


def test_a_record_for_a_user_not_yet_known_is_not_stored_when_tampered():
    hq = join_as("hq")
    report(hq, person("alice"))
    body, _ = directory_answer()

    def rename(record):
        record["username"] = "mallory"

    forged_body = tamper(body, 0, rename)
    outer = protocol.sign_directory(ls.server_signing_key(), forged_body)
    services.apply_directory(body=forged_body, signature=outer)
    assert not DirectoryUser.objects.exists()


def test_a_key_change_is_flagged_until_the_viewer_acknowledges_it():
    hq = join_as("hq")
    viewer, _ = make_person("viewer")
    report(hq, person("alice"))
    sync()
    assert not directory.key_change_pending(viewer, "alice")
    report(hq, person("alice", key=7))
    result = sync()
    assert result.keys_changed == ["alice"]
    assert directory.key_change_pending(viewer, "alice")
    services.acknowledge_key_change(viewer=viewer, user=directory.lookup("alice"))
    assert not directory.key_change_pending(viewer, "alice")


def test_a_revoked_node_and_its_users_leave_the_cache():
    join_as("hq")
    branch = enrol("branch")
    report(branch, person("carol"))
    sync()
    ls.revoke_node(name="branch")
    sync()
    assert not PeerNode.objects.get(name="branch").active
    with pytest.raises(directory.UnknownUser):
        directory.lookup("carol")
    with pytest.raises(protocol.ProtocolError) as refused:
        directory.resolve_peer_node("branch")
    assert refused.value.code == "node_revoked"


def test_a_replayed_older_directory_cannot_bring_a_revoked_node_back(monkeypatch):
    join_as("hq")
    branch = enrol("branch")
    report(branch, person("carol"))
    before_revocation = directory_answer()
    sync()
    later_ns = ls.time.time_ns() + 5 * 10**9  # not the same millisecond, however fast
    monkeypatch.setattr(ls.time, "time_ns", lambda: later_ns)
    ls.revoke_node(name="branch")
    sync()

    with pytest.raises(protocol.ProtocolError) as refused:
        services.apply_directory(body=before_revocation[0], signature=before_revocation[1])

    assert refused.value.code == "stale_directory"
    assert not PeerNode.objects.get(name="branch").active
    with pytest.raises(directory.UnknownUser):
        directory.lookup("carol")


def test_every_login_server_process_answers_the_same_bytes_for_one_state():
    """Processes build their cached answer at different moments; a node fetching from
    one then another must neither see a changed ETag nor refuse the answer as older."""
    join_as("hq")
    report(enrol("branch"), person("carol"))
    version = ls_directory.current_version()
    first = ls_directory.build(version, timezone.now())
    later = ls_directory.build(version, timezone.now() + timedelta(seconds=5))
    assert (first.body, first.etag) == (later.body, later.etag)
    services.apply_directory(body=later.body, signature=protocol.b64d(later.signature, field="s"))
    services.apply_directory(body=first.body, signature=protocol.b64d(first.signature, field="s"))


def test_a_directory_record_with_a_control_character_keeps_the_old_copy():
    join_as("hq")
    branch = enrol("branch")
    report(branch, person("carol", full_name="Carol"))
    sync()
    report(branch, person("carol", full_name="Car\x00ol"))
    result = sync()
    assert result.rejected == ["0"]
    assert directory.lookup("carol").full_name == "Carol"


def test_a_node_that_stops_reporting_shows_its_users_offline():
    join_as("hq")
    branch = enrol("branch")
    report(branch, person("carol"))
    Node.objects.filter(name="branch").update(last_report_at=timezone.now() - timedelta(hours=1))
    ls.bump_directory_version()
    sync()
    assert directory.lookup("carol").status == "offline"
    assert not PeerNode.objects.get(name="branch").online


def test_a_node_coming_back_online_is_announced():
    join_as("hq")
    branch = enrol("branch")
    report(branch, person("carol"))
    Node.objects.filter(name="branch").update(last_report_at=timezone.now() - timedelta(hours=1))
    ls.bump_directory_version()
    sync()
    report(branch, person("carol"))
    assert sync().came_online == ["branch"]


def test_a_node_listed_again_after_it_was_gone_is_announced():
    """Messages queued for it must go at once, as for a node that was only offline."""
    join_as("hq")
    branch = enrol("branch")
    report(branch, person("carol"))
    sync()
    Node.objects.filter(name="branch").update(active=False)  # off the directory for a while
    ls.bump_directory_version()
    sync()
    assert not PeerNode.objects.get(name="branch").active
    Node.objects.filter(name="branch").update(active=True)
    ls.bump_directory_version()
    report(branch, person("carol"))
    assert sync().came_online == ["branch"]


def test_an_unknown_peer_node_is_refused():
    with pytest.raises(protocol.ProtocolError) as refused:
        directory.resolve_peer_node("ghost")
    assert refused.value.code == "unknown_node"


# --- presence ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("has_session", "idle_s", "status"),
    [
        (True, 10, "online"),
        (True, 200, "away"),
        (True, 100_000, "offline"),
        (False, 10, "offline"),
    ],
)
def test_status_follows_sessions_and_activity(has_session, idle_s, status):
    now = timezone.now()
    last_active = now - timedelta(seconds=idle_s)
    assert presence.status_for(has_session=has_session, last_active=last_active, now=now) == status


def logged_in_client(client, user: User):
    client.force_login(user)
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = TOTPDevice.objects.get(user=user).persistent_id
    session.save()
    UserSession.objects.update_or_create(session_key=session.session_key, defaults={"user": user})
    User.objects.filter(pk=user.pk).update(last_activity=timezone.now())
    return client


def test_the_report_lists_every_local_user_with_keys_and_presence(client):
    join_as("hq")
    alice, _ = make_person("alice", position="CEO")
    make_person("bob")
    logged_in_client(client, alice)
    body = json.loads(services.build_report())
    users = {u["username"]: u for u in body["users"]}
    assert users["alice"]["status"] == "online"
    assert users["alice"]["position"] == "CEO"
    assert users["bob"]["status"] == "offline"
    alice.refresh_from_db()
    assert protocol.b64d(users["alice"]["sign_key"], field="k") == bytes(alice.keys.sign_public)


def test_a_session_being_logged_out_does_not_count_as_live(client):
    join_as("hq")
    alice, _ = make_person("alice")
    logged_in_client(client, alice)
    excluded = presence.session_hash(client.session.session_key)
    body = json.loads(services.build_report(exclude_session_hash=excluded))
    assert body["users"][0]["status"] == "offline"


def test_a_node_reports_what_the_login_server_accepts(client):
    hq = join_as("hq")
    make_person("alice")
    parsed = ls.parse_report(services.build_report())
    ls.accept_report(node=hq, report=parsed)
    assert ls_directory.snapshot().body.count(b'"record"') == 1


def test_one_unreportable_person_does_not_cost_everyone_their_report():
    """A name the protocol refuses (made before names were checked) is left out; a profile
    text with control characters goes as one clean line."""
    hq = join_as("hq")
    alice, _ = make_person("alice")
    alice.profile.full_name = "Alice\nSmith\x00"
    alice.profile.save()
    anne, _ = make_person("anne")
    User.objects.filter(pk=anne.pk).update(username="anne@hq")

    parsed = ls.parse_report(services.build_report())
    ls.accept_report(node=hq, report=parsed)

    assert [u.username for u in parsed.users] == ["alice"]
    assert parsed.users[0].full_name == "Alice Smith "


# --- pages -----------------------------------------------------------------------------
def test_the_users_page_lists_online_first_then_away_then_offline(client):
    hq = join_as("hq")
    viewer, _ = make_person("viewer")
    report(
        hq,
        person("olga", "offline", full_name="Aaron Offline"),
        person("anna", "away", full_name="Anna Away"),
        person("zed", "online", full_name="Zed Online"),
    )
    sync()
    page = logged_in_client(client, viewer).get("/users/").content.decode()
    assert page.index("Zed Online") < page.index("Anna Away") < page.index("Aaron Offline")
    assert "/chat/zed/" in page
    assert "out of date" not in page


def test_the_users_page_uses_a_fixed_number_of_queries(client, django_assert_max_num_queries):
    hq = join_as("hq")
    viewer, _ = make_person("viewer")
    report(hq, *[person(f"user{i}", "online") for i in range(50)])
    sync()
    logged_in_client(client, viewer)
    with django_assert_max_num_queries(12):
        response = client.get("/users/")
    assert response.content.decode().count('class="user-row') == 50


def test_the_users_page_escapes_what_the_directory_says(client):
    hq = join_as("hq")
    viewer, _ = make_person("viewer")
    report(
        hq,
        person("mallory", "away", full_name="<script>alert(1)</script>", position='"><img src=x>'),
    )
    sync()
    page = logged_in_client(client, viewer).get("/users/").content.decode()
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img src=x>" not in page
    assert "&quot;&gt;&lt;img src=x&gt;" in page


def test_a_stale_directory_shows_a_banner_and_unknown_presence(client):
    hq = join_as("hq")
    viewer, _ = make_person("viewer")
    report(hq, person("zed", "online"))
    sync()
    DirectorySync.objects.filter(pk=1).update(last_success_at=timezone.now() - timedelta(hours=1))
    page = logged_in_client(client, viewer).get("/users/").content.decode()
    assert "Presence may be out of date (login server unreachable since" in page
    assert 'data-status="unknown"' in page


def test_the_profile_shows_the_fingerprint_and_a_key_change_warning(client):
    hq = join_as("hq")
    viewer, _ = make_person("viewer")
    report(hq, person("alice"))
    sync()
    report(hq, person("alice", key=9))
    sync()
    logged_in_client(client, viewer)
    page = client.get("/people/alice/").content.decode()
    assert protocol.fingerprint(bytes([9]) * 32, bytes([109]) * 32) in page
    assert "security keys changed" in page
    response = client.post("/people/alice/verify-keys")
    assert response.status_code == 302
    assert "security keys changed" not in client.get("/people/alice/").content.decode()


def test_an_unknown_profile_is_404(client):
    join_as("hq")
    viewer, _ = make_person("viewer")
    assert logged_in_client(client, viewer).get("/people/nobody/").status_code == 404


def test_the_home_page_redirects_to_the_conversations_home(client):
    viewer, _ = make_person("viewer")
    response = logged_in_client(client, viewer).get("/")
    assert response.status_code == 302
    assert response["Location"] == "/chats/"


def test_health_reports_the_directory_age():
    join_as("hq")
    assert queries.login_server_health()["directory_age_s"] is None
    sync()
    health = queries.login_server_health()
    assert health["login_server"] == "ok"
    assert health["directory_age_s"] is not None


def test_health_counts_the_people_the_directory_lists_for_each_node():
    hq = join_as("hq")
    branch = enrol("branch")
    report(hq, person("alice"))
    report(branch, person("carol"), person("dave"))
    assert queries.login_server_health()["directory_people"] == {}
    sync()
    assert queries.login_server_health()["directory_people"] == {"branch": 2, "hq": 1}


# --- joining -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("login_server", "url"),
    [("http://ls.example.com", "https://hq.example.com"), ("https://ls.example.com", "http://hq")],
)
def test_in_production_a_node_joins_only_over_https(settings, login_server, url):
    settings.PRODUCTION = True
    with pytest.raises(services.LoginServerError) as refused:
        services.join_network(login_server_url=login_server, token="t", name="hq", url=url)
    assert refused.value.code == "insecure_url"
    assert not NodeIdentity.objects.exists()


def test_health_names_the_people_whose_names_another_node_holds():
    join_as("hq")
    sync()
    DirectorySync.objects.filter(pk=1).update(
        refused_usernames=[{"username": "dave", "code": "user_owned_by_other_node"}]
    )
    assert queries.login_server_health()["refused_usernames"] == ["dave"]
