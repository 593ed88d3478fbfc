"""End to end: a profile across offices with real nodes (uvicorn, Celery worker and beat,
Redis). Carol's own node (branch) serves her profile signed with its key; Alice's node (hq)
verifies and caches it, and still shows it, marked as cached, while branch's web is down."""

from __future__ import annotations

import base64
import io
import json

import pytest
import requests
import schemathesis
from PIL import Image
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from peers import protocol
from tests.helpers import samples
from tests.helpers.openapi import SPEC_PATH, NodeSignature, enrolment
from tests.network import Network, wait_for

pytestmark = pytest.mark.integration

PASSWORD = "a long enough passphrase 42"
CAROL = {
    "full_name": "Carol Nguyễn",
    "position": "CFO",
    "location": "Zürich office",
    "description": "Numbers first <b>then</b> people",
}


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    root = tmp_path_factory.mktemp("profiles")
    picture = root / "carol.png"
    picture.write_bytes(samples.png(size=(120, 90)))
    # A cached copy is refreshed on every view, and a failed refresh tried again at once.
    settings = {"P2P_PROFILE_CACHE_S": "1", "P2P_PROFILE_RETRY_S": "1"}
    with Network(root, nodes=("hq", "branch"), settings=settings) as network:
        alice = network.create_person("hq", "alice", PASSWORD, full_name="Alice Martin")
        network.create_person("branch", "carol", PASSWORD, picture=str(picture), **CAROL)
        network.alice = network.login("hq", "alice", PASSWORD, alice)
        yield network


def carol_on_hq(net: Network) -> str:
    response = net.alice.get(net.node("hq").url + "/people/carol/", timeout=10)
    return response.text if response.status_code == 200 else ""


def shows_full_profile(page: str) -> bool:
    return "Zürich office" in page and 'src="/people/carol/picture"' in page


def full_profile_on_hq(net: Network, *, note: str = "") -> str | None:
    """Carol's profile page on hq once it shows her full profile (and note), else None."""
    page = carol_on_hq(net)
    return page if shows_full_profile(page) and note in page else None


def picture_on_hq(net: Network) -> Image.Image:
    response = net.alice.get(net.node("hq").url + "/people/carol/picture", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("image/")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


def test_alice_sees_carols_full_profile_from_her_office(net):
    page = wait_for(
        lambda: full_profile_on_hq(net),
        timeout=60,
        interval=0.5,
        message="carol's profile from branch on hq",
    )

    assert "Carol Nguyễn" in page and "CFO" in page
    assert "Numbers first &lt;b&gt;then&lt;/b&gt; people" in page
    assert "Last updated" in page
    assert picture_on_hq(net).size == (120, 90)


def test_with_branch_down_the_profile_still_shows_marked_as_cached(net):
    wait_for(lambda: full_profile_on_hq(net), timeout=60, interval=0.5, message="cached")
    branch = net.node("branch")
    branch.stop_web()
    try:
        page = wait_for(
            lambda: full_profile_on_hq(net, note="branch could not be reached"),
            timeout=60,
            interval=0.5,
            message="hq marks carol's profile as cached while branch is down",
        )

        assert "Cached profile, as of" in page
        assert "Carol Nguyễn" in page and "CFO" in page
        assert picture_on_hq(net).size == (120, 90)
    finally:
        branch.start_web()


CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
]


def enrolled_reader(net: Network) -> NodeSignature:
    """Another office's node, enrolled with the documented token command, that nobody calls."""
    token = net.login_server.manage("create_enrolment_token", "reader").stdout
    body, signer = enrolment(
        token=token.strip().splitlines()[-1].strip(), name="reader", url="http://127.0.0.1:9"
    )
    answer = requests.post(net.login_server.url + "/api/v1/enrol", json=body, timeout=10)
    assert answer.status_code == 201, answer.text
    return signer


def branch_key(net: Network, signer: NodeSignature) -> bytes:
    directory = requests.get(
        net.login_server.url + "/api/v1/directory", auth=signer, timeout=10
    ).json()
    (node,) = [n for n in directory["nodes"] if n["name"] == "branch"]
    return base64.b64decode(node["sign_key"])


def test_the_profile_api_answers_another_office_as_described(net):
    signer = enrolled_reader(net)
    described = schemathesis.openapi.from_path(SPEC_PATH)
    profile = described["/api/v1/profiles/{username}"]["GET"]
    branch = net.node("branch").url

    def answered():  # once branch's directory lists the reader (a schemathesis Response)
        case = profile.Case(path_parameters={"username": "carol"})
        response = case.call_and_validate(base_url=branch, auth=signer, checks=CHECKS)
        return response if response.status_code == 200 else None

    response = wait_for(answered, timeout=60, interval=0.5, message="branch answers reader")
    signature = base64.b64decode(response.headers["x-p2p-signature"][0])
    protocol.verify_profile(branch_key(net, signer), response.content, signature)
    carol = json.loads(response.content)
    assert (carol["username"], carol["node"], carol["location"]) == (
        "carol",
        "branch",
        CAROL["location"],
    )

    picture = described["/api/v1/profiles/{username}/picture"]["GET"].Case(
        path_parameters={"username": "carol"}
    )
    answer = picture.call_and_validate(base_url=branch, auth=signer, checks=CHECKS)
    assert answer.status_code == 200
    assert protocol.sha256_hex(answer.content) == carol["picture"]["sha256"]
