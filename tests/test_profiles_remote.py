"""Profiles across offices in one database: the profile API this node serves to its peers
(signed GET, signed answer), the cache of other offices' profiles that it verifies and
keeps, and the profile page that shows them with their age.

The other office of the cache tests is a small HTTP server on loopback that answers each
path with what the test put there: profiles signed with that office's key, or not.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis
from django.test import Client
from django.utils import timezone
from nacl.signing import SigningKey

from accounts import services as account_services
from accounts.models import User
from peers import protocol, services
from peers.models import PeerNode, RemoteProfile
from tests.helpers import samples
from tests.helpers.accounts import logged_in
from tests.helpers.factories import make_person
from tests.helpers.messaging import (
    RemoteNode,
    join_local_node,
    make_local_person,
    make_remote_node,
    make_remote_person,
)

pytestmark = pytest.mark.django_db

PROFILE = "/api/v1/profiles/{}"
XSS = {
    "full_name": "<script>alert('name')</script>",
    "position": '"><img src=x onerror=alert(2)>',
    "location": "<svg onload=alert(3)>",
    "description": "<iframe src=javascript:alert(4)></iframe>\n</dd><script>alert(5)</script>",
}


@pytest.fixture(autouse=True)
def _media_in_tmp(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


def now_ms() -> int:
    return int(time.time() * 1000)


# --- the profile API this node serves ------------------------------------------------------
@pytest.fixture
def serving():
    """This node "hq" with carol (a profile and a picture); "branch" is an enrolled peer."""
    hq_key = join_local_node("hq")
    carol = make_local_person("carol")
    account_services.update_profile(
        user=carol,
        full_name="Carol Ng",
        position="CFO",
        description="Numbers\r\nand people",
        location="Zürich",
        picture=io.BytesIO(samples.jpeg(size=(64, 48))),
    )
    return hq_key, make_remote_node("branch")


def get_signed(node: RemoteNode, path: str, *, key: SigningKey | None = None):
    auth = protocol.sign_request(key or node.key, node=node.name, method="GET", path=path, body=b"")
    return Client().get(path, HTTP_AUTHORIZATION=auth)


def test_a_signed_caller_gets_the_profile_signed_over_its_exact_bytes(serving):
    hq_key, branch = serving

    response = get_signed(branch, PROFILE.format("carol"))

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    signature = base64.b64decode(response["X-P2P-Signature"])
    protocol.verify_profile(bytes(hq_key.verify_key), response.content, signature)
    profile = protocol.parse_profile(response.content)
    assert (profile.username, profile.node) == ("carol", "hq")
    assert (profile.full_name, profile.position, profile.location) == ("Carol Ng", "CFO", "Zürich")
    assert profile.description == "Numbers\nand people"
    assert abs(profile.served_ms - now_ms()) < 5000
    assert profile.picture is not None and profile.picture.mime == "image/jpeg"


def test_the_picture_is_exactly_the_bytes_the_profile_signs(serving):
    _, branch = serving
    profile = protocol.parse_profile(get_signed(branch, PROFILE.format("carol")).content)

    response = get_signed(branch, PROFILE.format("carol") + "/picture")

    assert response.status_code == 200
    assert response["Content-Type"] == "image/jpeg"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert len(response.content) == profile.picture.size
    assert protocol.sha256_hex(response.content) == profile.picture.sha256


def test_an_unsigned_request_is_a_401(serving):
    response = Client().get(PROFILE.format("carol"))

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "missing_signature"
    assert b"Carol" not in response.content


def test_a_request_signed_with_another_key_is_refused(serving):
    _, branch = serving
    response = get_signed(branch, PROFILE.format("carol"), key=SigningKey.generate())
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "bad_signature"


def test_a_node_outside_the_directory_is_refused(serving):
    stranger = RemoteNode("stranger", SigningKey.generate(), row=None)
    response = get_signed(stranger, PROFILE.format("carol"))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "unknown_node"


def test_an_unknown_person_is_a_404(serving):
    _, branch = serving
    response = get_signed(branch, PROFILE.format("nobody"))
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "profile_not_found"


def test_a_deactivated_person_is_a_404(serving):
    _, branch = serving
    User.objects.filter(username="carol").update(is_active=False)
    for path in (PROFILE.format("carol"), PROFILE.format("carol") + "/picture"):
        response = get_signed(branch, path)
        assert response.status_code == 404, path


def test_a_person_without_a_picture_has_null_and_no_picture(serving):
    _, branch = serving
    make_local_person("dave")

    profile = protocol.parse_profile(get_signed(branch, PROFILE.format("dave")).content)
    picture = get_signed(branch, PROFILE.format("dave") + "/picture")

    assert profile.picture is None
    assert picture.status_code == 404
    assert picture.json()["error"]["code"] == "picture_not_found"


def test_only_get_is_answered(serving):
    response = Client().post(PROFILE.format("carol"))
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


# --- the cache of other offices' profiles --------------------------------------------------
@dataclass
class FakeOffice:
    """Another office's node on loopback: answers each path with (status, headers, body)."""

    server: ThreadingHTTPServer
    answers: dict[str, tuple[int, dict[str, str], bytes]] = field(default_factory=dict)
    asked: list[tuple[str, str]] = field(default_factory=list)  # (path, Authorization)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def office() -> Iterator[FakeOffice]:
    answers: dict = {}
    asked: list = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append((self.path, self.headers.get("Authorization", "")))
            status, headers, body = answers.get(self.path, (404, {}, b'{"error":{}}'))
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield FakeOffice(server, answers, asked)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def branch(office, settings) -> RemoteNode:
    """This node is "hq"; carol is a person of "branch", served by the fake office."""
    settings.PEER_HTTP_TIMEOUT_S = 2.0
    join_local_node("hq")
    node = make_remote_node("branch", url=office.url)
    make_remote_person(node, "carol")
    return node


PICTURE = samples.png(size=(40, 30))


def serve(
    office: FakeOffice,
    peer: RemoteNode,
    *,
    picture: bytes | None = PICTURE,
    served_picture: bytes | None = None,
    mime: str = "image/png",
    sign_with: SigningKey | None = None,
    **fields,
) -> bytes:
    """Put carol's profile (signed by peer's key unless sign_with) and picture on office."""
    values = dict(
        username="carol",
        node=peer.name,
        full_name="Carol Ng",
        position="CFO",
        description="Numbers\nand people",
        location="Zürich",
        updated_ms=1_767_225_600_000,
        picture=(
            None
            if picture is None
            else protocol.ProfilePicture(
                sha256=protocol.sha256_hex(picture), size=len(picture), mime=mime
            )
        ),
        served_ms=now_ms(),
    )
    values.update(fields)
    body = protocol.make_profile(**values)
    signature = protocol.sign_profile(sign_with or peer.key, body)
    office.answers[PROFILE.format("carol")] = (
        200,
        {"Content-Type": "application/json", "X-P2P-Signature": protocol.b64e(signature)},
        body,
    )
    if picture is not None:
        office.answers[PROFILE.format("carol") + "/picture"] = (
            200,
            {"Content-Type": mime},
            picture if served_picture is None else served_picture,
        )
    return body


@pytest.fixture
def cached(office, branch) -> RemoteProfile:
    """carol's verified profile, cached once."""
    body = serve(office, branch, served_ms=now_ms() - 1000)
    row = services.fetch_profile(username="carol")
    assert row is not None and bytes(row.body) == body
    return row


def assert_kept(before: RemoteProfile, code: str) -> None:
    row = RemoteProfile.objects.get(username="carol")
    assert bytes(row.body) == bytes(before.body)
    assert bytes(row.picture) == bytes(before.picture)
    assert row.fetched_at == before.fetched_at
    assert row.refresh_error == code
    assert row.refresh_failed_at is not None


def test_a_verified_profile_and_its_picture_are_cached(office, branch):
    body = serve(office, branch)

    row = services.fetch_profile(username="carol")

    assert row is not None
    assert (row.node, bytes(row.body), row.refresh_error) == ("branch", body, "")
    assert bytes(row.picture) == PICTURE
    assert (row.picture_mime, row.picture_sha256) == ("image/png", protocol.sha256_hex(PICTURE))
    protocol.verify_profile(bytes(branch.key.verify_key), bytes(row.body), bytes(row.signature))


def test_the_fetch_is_a_request_signed_by_this_node(office, branch):
    hq = join_local_node("hq")
    serve(office, branch, picture=None)

    services.fetch_profile(username="carol")

    path, authorization = office.asked[0]
    auth = protocol.parse_auth_header(authorization)
    protocol.verify_request(bytes(hq.verify_key), auth, method="GET", path=path, body=b"")
    assert (path, auth.node) == ("/api/v1/profiles/carol", "hq")


def test_an_unchanged_picture_is_not_fetched_again(office, branch, cached):
    serve(office, branch)
    office.asked.clear()

    services.fetch_profile(username="carol")

    assert [path for path, _ in office.asked] == ["/api/v1/profiles/carol"]


def test_a_forged_signature_is_refused_and_the_cache_kept(office, branch, cached):
    serve(office, branch, full_name="Mallory", sign_with=SigningKey.generate())

    assert services.fetch_profile(username="carol") is None

    assert_kept(cached, "bad_profile_signature")


def test_a_profile_without_a_signature_is_refused(office, branch, cached):
    serve(office, branch)
    status, _, body = office.answers[PROFILE.format("carol")]
    office.answers[PROFILE.format("carol")] = (status, {"Content-Type": "application/json"}, body)

    assert services.fetch_profile(username="carol") is None

    assert_kept(cached, "bad_profile_signature")


@pytest.mark.parametrize(
    "fields", [{"node": "other"}, {"username": "dave"}], ids=["wrong node", "wrong person"]
)
def test_a_profile_of_another_node_or_person_is_refused(office, branch, cached, fields):
    serve(office, branch, **fields)  # signed by branch's own key

    assert services.fetch_profile(username="carol") is None

    assert_kept(cached, "wrong_profile")


def test_a_profile_signed_by_another_office_is_refused(office, branch, cached):
    other = make_remote_node("other")
    serve(office, branch, full_name="Mallory", sign_with=other.key)

    assert services.fetch_profile(username="carol") is None

    assert_kept(cached, "bad_profile_signature")


def test_a_picture_whose_hash_differs_is_refused(office, branch, cached):
    new_picture = samples.png(size=(41, 30))
    tampered = bytearray(new_picture)
    tampered[-20] ^= 0xFF
    serve(office, branch, picture=new_picture, served_picture=bytes(tampered))

    assert services.fetch_profile(username="carol") is None

    assert_kept(cached, "picture_mismatch")


def test_a_picture_longer_than_signed_is_not_read(office, branch, cached):
    new_picture = samples.png(size=(41, 30))
    serve(office, branch, picture=new_picture, served_picture=new_picture + b"<script>")

    assert services.fetch_profile(username="carol") is None

    assert_kept(cached, "answer_too_large")


def test_an_oversize_picture_is_refused_before_it_is_fetched(office, branch, cached, settings):
    settings.PROFILE_PICTURE_MAX_BYTES = len(PICTURE) + 10
    big = samples.noise_jpeg((200, 200))
    serve(office, branch, picture=big, mime="image/jpeg")
    office.asked.clear()

    assert services.fetch_profile(username="carol") is None

    assert_kept(cached, "picture_too_large")
    assert [path for path, _ in office.asked] == ["/api/v1/profiles/carol"]


@pytest.mark.parametrize(
    ("picture", "mime"),
    [
        (samples.html(), "image/png"),  # not an image at all
        (samples.jpeg(), "image/png"),  # another type than signed
        (samples.png_claiming_size(20_000, 20_000), "image/png"),  # too many pixels
        (samples.truncated_png(), "image/png"),
    ],
    ids=["html", "jpeg-as-png", "pixel-bomb", "truncated"],
)
def test_a_picture_that_is_not_an_image_of_its_type_is_refused(
    office, branch, cached, picture, mime
):
    serve(office, branch, picture=picture, mime=mime)

    assert services.fetch_profile(username="carol") is None

    row = RemoteProfile.objects.get(username="carol")
    assert bytes(row.picture) == PICTURE
    assert row.refresh_error in {"picture_invalid", "picture_too_large"}


def test_an_older_profile_than_the_cached_one_is_refused(office, branch, cached):
    serve(office, branch, full_name="Carol Old", served_ms=cached.served_ms - 1)

    assert services.fetch_profile(username="carol") is None

    assert_kept(cached, "stale_profile")


def test_a_profile_served_long_ago_is_refused(office, branch):
    serve(office, branch, served_ms=now_ms() - 10 * 60 * 1000)

    assert services.fetch_profile(username="carol") is None

    assert not RemoteProfile.objects.exists()


def test_an_office_that_does_not_answer_leaves_the_cache(office, branch, cached):
    PeerNode.objects.filter(name="branch").update(url="http://127.0.0.1:9")

    assert services.fetch_profile(username="carol") is None

    assert_kept(cached, "unreachable")


def test_a_refusal_by_the_office_is_recorded_with_its_code(office, branch, cached):
    office.answers[PROFILE.format("carol")] = (
        404,
        {"Content-Type": "application/json"},
        b'{"error":{"code":"profile_not_found","message":"no such person"}}',
    )

    assert services.fetch_profile(username="carol") is None

    assert_kept(cached, "profile_not_found")


def test_a_newer_profile_replaces_the_cached_one(office, branch, cached):
    body = serve(office, branch, location="Genève", picture=None)

    row = services.fetch_profile(username="carol")

    assert bytes(row.body) == body
    assert row.picture is None and row.picture_sha256 == ""
    assert (row.refresh_error, row.refresh_failed_at) == ("", None)


# --- the profile page ------------------------------------------------------------------------
@pytest.fixture
def viewer() -> Client:
    _, secret = make_person("viewer")
    return logged_in(Client(), "viewer", secret)


@pytest.fixture
def refreshes(monkeypatch) -> list[str]:
    """The background refreshes the page asks for (never sent to Celery here)."""
    asked: list[str] = []
    monkeypatch.setattr(
        services, "request_profile_refresh", lambda *, username: asked.append(username)
    )
    return asked


def age(row: RemoteProfile, *, hours: float) -> None:
    RemoteProfile.objects.filter(pk=row.pk).update(
        fetched_at=timezone.now() - timedelta(hours=hours)
    )


def test_a_fresh_cached_profile_shows_every_field_without_a_note(
    office, branch, cached, viewer, refreshes
):
    office.asked.clear()

    page = viewer.get("/people/carol/").content.decode()

    assert "Carol Ng" in page and "CFO" in page and "Zürich" in page
    assert "Numbers<br>and people" in page
    assert "1 Jan 2026, 00:00 UTC" in page  # last updated
    assert 'src="/people/carol/picture"' in page
    assert "Cached profile" not in page
    assert office.asked == [] and refreshes == []  # never waits on the office


def test_an_old_copy_is_shown_with_its_age_and_refreshed_in_the_background(
    office, branch, cached, viewer, refreshes
):
    age(cached, hours=2)
    office.asked.clear()

    page = viewer.get("/people/carol/").content.decode()

    assert "Cached profile, as of" in page and "2\xa0hours ago" in page
    assert "Carol Ng" in page and "Zürich" in page
    assert refreshes == ["carol"]
    assert office.asked == []


def test_an_offline_office_is_named_in_the_note(office, branch, cached, viewer, refreshes):
    age(cached, hours=3)
    PeerNode.objects.filter(name="branch").update(online=False)

    page = viewer.get("/people/carol/").content.decode()

    assert "— branch is offline." in page
    assert "3\xa0hours ago" in page
    assert "Numbers<br>and people" in page


def test_a_failed_refresh_says_the_office_could_not_be_reached(
    office, branch, cached, viewer, refreshes
):
    PeerNode.objects.filter(name="branch").update(url="http://127.0.0.1:9")
    services.fetch_profile(username="carol")

    page = viewer.get("/people/carol/").content.decode()

    assert "Cached profile, as of" in page and "branch could not be reached" in page
    assert refreshes == []  # it just failed: tried again after P2P_PROFILE_RETRY_S


def test_a_first_view_fetches_the_profile_at_once(office, branch, viewer, refreshes):
    serve(office, branch)

    page = viewer.get("/people/carol/").content.decode()

    assert "Carol Ng" in page and "Zürich" in page
    assert "Cached profile" not in page
    assert RemoteProfile.objects.filter(username="carol").exists()


def test_a_first_view_of_an_offline_office_does_not_wait(office, branch, viewer, refreshes):
    serve(office, branch)
    PeerNode.objects.filter(name="branch").update(online=False)

    page = viewer.get("/people/carol/").content.decode()

    assert office.asked == []
    assert refreshes == ["carol"]
    assert "The full profile is not available yet: branch is offline" in page
    assert "Carol" in page  # the directory's name still shows


def test_a_cached_profile_from_the_persons_former_node_is_not_shown(
    office, branch, cached, viewer, refreshes
):
    other = make_remote_node("other", url="http://127.0.0.1:9")
    PeerNode.objects.filter(name="other").update(online=False)
    carol = branch.row.users.get(username="carol")
    carol.node = other.row
    carol.save()

    page = viewer.get("/people/carol/").content.decode()

    assert "Zürich" not in page
    assert viewer.get("/people/carol/picture").status_code == 404


def test_profile_fields_from_another_office_render_as_text(office, branch, viewer, refreshes):
    serve(office, branch, **XSS)

    page = viewer.get("/people/carol/").content.decode()

    for value in XSS.values():
        assert value.split("\n")[0] not in page
    assert "&lt;script&gt;alert(&#x27;name&#x27;)&lt;/script&gt;" in page
    assert "&lt;svg onload=alert(3)&gt;" in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(2)&gt;" in page
    assert "&lt;/dd&gt;&lt;script&gt;alert(5)&lt;/script&gt;" in page


def test_the_cached_picture_is_served_like_every_person_file(office, branch, cached, viewer):
    response = viewer.get("/people/carol/picture")

    assert response.status_code == 200
    assert b"".join(response.streaming_content) == PICTURE
    assert response["Content-Type"] == "image/png"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Content-Security-Policy"] == "sandbox; default-src 'none'"


def test_the_cached_picture_needs_a_verified_session(office, branch, cached):
    assert Client().get("/people/carol/picture").status_code == 302


def test_a_person_without_a_cached_picture_has_none(office, branch, viewer, refreshes):
    serve(office, branch, picture=None)

    page = viewer.get("/people/carol/").content.decode()

    assert "Carol Ng" in page
    assert "/people/carol/picture" not in page
    assert viewer.get("/people/carol/picture").status_code == 404


def test_a_page_does_not_wait_for_a_broker_that_is_down(
    office, branch, cached, viewer, monkeypatch
):
    down = redis.Redis.from_url("redis://127.0.0.1:9/0", socket_connect_timeout=2)
    monkeypatch.setattr(services.redis_client, "get", lambda: down)
    age(cached, hours=2)

    started = time.monotonic()
    page = viewer.get("/people/carol/").content.decode()

    assert time.monotonic() - started < 2
    assert "Cached profile, as of" in page


@pytest.mark.parametrize("name", ["anne@hq", "jos%C3%A9", "a" * 151])
def test_a_name_the_protocol_refuses_is_not_found(serving, name):
    _, branch = serving
    for path in (PROFILE.format(name), PROFILE.format(name) + "/picture"):
        response = get_signed(branch, path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] in {"profile_not_found", "picture_not_found"}


def test_a_refused_refresh_says_the_copy_failed_verification(
    office, branch, cached, viewer, refreshes
):
    serve(office, branch, full_name="Mallory", sign_with=SigningKey.generate())
    services.fetch_profile(username="carol")

    page = viewer.get("/people/carol/").content.decode()

    assert "branch sent a copy that failed verification" in page
    assert "Carol Ng" in page and "Mallory" not in page
