"""schemathesis against a live network (a login server, hq and branch with their workers,
beat and Redis): requests generated from docs/openapi.yaml and signed by an enrolled
node's key get no 5xx and answers that match the description; unsigned ones get a 4xx.
The answers fuzzing cannot reach (201 enrolled, 304 unchanged, a key rotated, an
envelope acknowledged, health figures) are made on purpose and checked the same way.

Bounded: Hypothesis is derandomized with a few examples per operation, and schemathesis
has a fixed seed, so every run sends the same requests (up to timestamps and nonces)."""

import base64
import json
import time

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from nacl.public import PrivateKey
from nacl.signing import SigningKey
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from peers import protocol
from tests.helpers.openapi import SPEC_PATH, NodeSignature, enrolment, rotation
from tests.network import Network, wait_for

pytestmark = pytest.mark.integration

FUZZER = "fuzzer"  # the node this test enrols; its key signs the generated requests
UNREACHABLE_URL = "http://127.0.0.1:9"  # nothing listens there: nobody delivers to it
SEED = 20260101
EXAMPLES_PER_OPERATION = 25
BOUNDED = settings(
    max_examples=EXAMPLES_PER_OPERATION,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


def _signed_operation(operation) -> bool:
    """The operation needs a node signature (the description's default security)."""
    return "security" not in operation.definition.raw


def signature_accepted(ctx, response, case):
    """A request signed by an enrolled node is never refused for its signature: the
    signature covers exactly the bytes that were sent."""
    if _signed_operation(case.operation) and response.status_code in (401, 403):
        raise AssertionError(f"a signed request was refused: {response.text}")


def refused_as_unsigned(ctx, response, case):
    """A request without a valid node signature is refused with a 4xx."""
    if not 400 <= response.status_code < 500:
        raise AssertionError(
            f"{case.method} {case.path} without a valid signature answered "
            f"{response.status_code}, not a 4xx"
        )


CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
]
SIGNED_CHECKS = [*CHECKS, signature_accepted]
UNSIGNED_CHECKS = [*CHECKS, refused_as_unsigned]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# What schemathesis sends as the Authorization header of unsigned requests: shaped like
# a node's, with a wrong, unknown or malformed node, time, nonce or signature.
schemathesis.openapi.format(
    "_p2p-node_auth",
    st.builds(
        'P2P-Node node="{}",ts="{}",nonce="{}",sig="{}"'.format,
        st.sampled_from(["hq", "branch", FUZZER, "nobody", "", "HQ"]),
        st.one_of(
            st.integers(-600, 600).map(lambda skew: str(int(time.time()) + skew)),
            st.integers(0, 10**13).map(str),
        ),
        st.one_of(
            st.text("0123456789abcdef", min_size=32, max_size=32),
            st.text("0123456789abcdefABCDEF", max_size=40),
        ),
        st.one_of(st.binary(min_size=64, max_size=64), st.binary(max_size=80)).map(_b64),
    ),
)

# Loaded at import from the file alone; each call names the live server it goes to.
DESCRIBED = schemathesis.openapi.from_path(
    SPEC_PATH, config=schemathesis.Config.from_dict({"seed": SEED})
)
login_server = DESCRIBED.include(tag="login-server")
peer = DESCRIBED.include(tag="node")
# include() calls are OR-ed and exclude() calls AND-ed: the signed operations of each.
login_server_signed = login_server.exclude(func=lambda ctx: not _signed_operation(ctx.operation))
peer_signed = peer.exclude(func=lambda ctx: not _signed_operation(ctx.operation))


def call(path: str, method: str, base_url: str, *, auth=None, checks=SIGNED_CHECKS, **case):
    """One request made on purpose, checked against the description like generated ones."""
    made = DESCRIBED[path][method].Case(media_type="application/json", **case)
    return made.call_and_validate(base_url=base_url, auth=auth, checks=checks)


def enrol(network: Network, name: str) -> NodeSignature:
    """A node enrolled with the documented token command and POST /api/v1/enrol."""
    token = network.login_server.manage("create_enrolment_token", name).stdout
    body, signer = enrolment(
        token=token.strip().splitlines()[-1].strip(), name=name, url=UNREACHABLE_URL
    )
    answer = call("/api/v1/enrol", "POST", network.login_server.url, body=body)
    assert answer.status_code == 201, answer.text
    return signer


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    with Network(tmp_path_factory.mktemp("openapi"), nodes=("hq", "branch")) as net:
        net.wait_ready(["hq", "branch"])
        yield net


@pytest.fixture(scope="module")
def fuzzer(network) -> NodeSignature:
    signer = enrol(network, FUZZER)

    def hq_knows_it() -> bool:  # an empty batch is refused as empty, not as unknown_node
        answer = call("/api/v1/inbox", "POST", network.node("hq").url, auth=signer,
                      checks=CHECKS, body={"envelopes": []})  # fmt: skip
        return answer.status_code == 400

    wait_for(hq_knows_it, timeout=30, message="hq's directory lists the enrolled node")
    return signer


# --- generated requests ---------------------------------------------------------------
@login_server.parametrize()
@BOUNDED
def test_login_server_api_answers_signed_requests_as_described(case, network, fuzzer):
    case.call_and_validate(base_url=network.login_server.url, auth=fuzzer, checks=SIGNED_CHECKS)


@peer.parametrize()
@BOUNDED
def test_peer_api_answers_signed_requests_as_described(case, network, fuzzer):
    case.call_and_validate(base_url=network.node("hq").url, auth=fuzzer, checks=SIGNED_CHECKS)


@login_server_signed.parametrize()
@BOUNDED
def test_login_server_api_refuses_unsigned_requests_with_a_4xx(case, network, fuzzer):
    case.call_and_validate(base_url=network.login_server.url, checks=UNSIGNED_CHECKS)


@peer_signed.parametrize()
@BOUNDED
def test_peer_api_refuses_unsigned_requests_with_a_4xx(case, network, fuzzer):
    case.call_and_validate(base_url=network.node("hq").url, checks=UNSIGNED_CHECKS)


# --- answers that generated requests do not reach -------------------------------------
def test_an_unchanged_directory_is_a_signed_304_as_described(network, fuzzer):
    def unchanged():
        etag = call("/api/v1/directory", "GET", network.login_server.url, auth=fuzzer)
        again = call("/api/v1/directory", "GET", network.login_server.url, auth=fuzzer,
                     headers={"If-None-Match": etag.headers["etag"][0]})  # fmt: skip
        return again.status_code == 304

    # the directory changes whenever a node reports a change: retried until it holds
    wait_for(unchanged, timeout=30, message="a 304 for the ETag just fetched")


def test_a_key_rotation_and_a_rotation_to_the_same_key_answer_as_described(network, fuzzer):
    signer = enrol(network, "rotating")
    new_key = SigningKey.generate()

    rotated = call("/api/v1/rotate-key", "POST", network.login_server.url, auth=signer,
                   body=rotation(signer, new_key))  # fmt: skip
    signer.key = new_key
    again = call("/api/v1/rotate-key", "POST", network.login_server.url, auth=signer,
                 body=rotation(signer, new_key))  # fmt: skip

    assert rotated.status_code == 200
    assert again.json()["error"]["code"] == "same_key"


def _listed_box_key(network: Network, signer: NodeSignature, username: str) -> bytes | None:
    """username's box key in the login server's directory, once it is listed."""
    directory = call("/api/v1/directory", "GET", network.login_server.url, auth=signer).json()
    for entry in directory["users"]:
        record = json.loads(base64.b64decode(entry["record"]))
        if record["username"] == username:
            return base64.b64decode(record["box_key"])
    return None


def test_an_envelope_from_a_listed_person_is_acknowledged_as_described(network, fuzzer):
    network.create_person("hq", "alice", "a long enough passphrase 42")
    sign, box = SigningKey.generate(), PrivateKey.generate()
    person = {"username": "zoe", "sign_key": _b64(bytes(sign.verify_key)),
              "box_key": _b64(bytes(box.public_key)), "status": "online"}  # fmt: skip
    call("/api/v1/report", "POST", network.login_server.url, auth=fuzzer,
         body={"users": [person]})  # fmt: skip
    alice_box = wait_for(
        lambda: _listed_box_key(network, fuzzer, "alice"), timeout=30, message="alice listed"
    )
    envelope = protocol.seal_envelope(
        sender_sign_key=sign, sender_box_key=box, recipient_box_key=alice_box,
        envelope_id=protocol.new_envelope_id(), kind="message", sender="zoe",
        sender_node=FUZZER, recipient="alice", recipient_node="hq",
        created_ms=int(time.time() * 1000), payload={"text": "hello"},
    )  # fmt: skip
    batch = json.loads(protocol.encode_batch([envelope]))

    def acknowledged() -> bool:  # once hq's directory lists zoe
        answer = call("/api/v1/inbox", "POST", network.node("hq").url, auth=fuzzer, body=batch)
        return answer.json()["acks"] != []

    wait_for(acknowledged, timeout=30, message="hq acknowledges zoe's envelope")


@pytest.mark.parametrize("server", ["login", "hq"])
def test_health_figures_for_the_monitoring_token_are_as_described(network, server):
    url = network.login_server.url if server == "login" else network.node(server).url
    answer = call("/health", "GET", url,
                  headers={"Authorization": f"Bearer {network.health_token}"})  # fmt: skip

    assert "database" in answer.json()
