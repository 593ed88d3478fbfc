"""End to end: enrolment by the documented commands, presence across nodes, offline
detection and revocation, with a real login server, two nodes, workers, beat and Redis."""

import re

import pytest

from tests.network import Network, wait_for

pytestmark = pytest.mark.integration

PASSWORD = "a long enough passphrase 42"


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    with Network(tmp_path_factory.mktemp("directory"), nodes=("hq", "branch")) as network:
        network.secrets = {
            "alice": network.create_person("hq", "alice", PASSWORD, full_name="Alice Hq"),
            "bob": network.create_person("branch", "bob", PASSWORD, full_name="Bob Branch"),
        }
        network.bob = network.login("branch", "bob", PASSWORD, network.secrets["bob"])
        yield network


def status_on_branch(net, username: str) -> str | None:
    page = net.bob.get(net.node("branch").url + "/users/", timeout=10).text
    match = re.search(rf'data-username="{username}" data-status="(\w+)"', page)
    return match.group(1) if match else None


def test_enrolment_prints_fingerprints_that_match_the_login_server(net):
    joined = (net.node("hq").data_dir / "joined").read_text()
    node_side = re.search(r"login server key fingerprint: ([0-9a-f ]+)", joined).group(1)
    server_side = net.login_server.manage("create_enrolment_token", "later").stdout
    assert f"login server key fingerprint: {node_side}" in server_side
    assert "node key fingerprint:" in joined


def test_a_login_on_hq_shows_the_user_online_on_branch(net):
    net.login("hq", "alice", PASSWORD, net.secrets["alice"])
    wait_for(
        lambda: status_on_branch(net, "alice") == "online",
        timeout=30,
        message="alice online on branch's users page",
    )


ETAG_SCRIPT = """
from peers.client import signed_get
from peers.identity import local_node
base = local_node().login_server_url
for attempt in range(5):
    first = signed_get(base, "/api/v1/directory")
    again = signed_get(base, "/api/v1/directory", {"If-None-Match": first.headers["ETag"]})
    if again.status_code == 304:
        break
print(first.status_code, again.status_code, len(again.content))
"""


def test_an_unchanged_directory_costs_a_304_with_no_body(net):
    result = net.node("branch").manage("shell", "-c", ETAG_SCRIPT)
    assert result.stdout.strip().splitlines()[-1].split() == ["200", "304", "0"]


def test_a_node_that_stops_reporting_shows_its_users_offline_then_online_again(net):
    net.login("hq", "alice", PASSWORD, net.secrets["alice"])
    wait_for(lambda: status_on_branch(net, "alice") == "online", timeout=30, message="online")
    hq = net.node("hq")
    hq.stop_beat()
    hq.stop_worker()
    wait_for(
        lambda: status_on_branch(net, "alice") == "offline",
        timeout=30,
        message="alice offline on branch after hq stopped reporting",
    )
    hq.start_worker()
    hq.start_beat()
    wait_for(lambda: status_on_branch(net, "alice") == "online", timeout=30, message="back")


def test_a_revoked_node_disappears_and_its_requests_are_refused(net):
    wait_for(lambda: status_on_branch(net, "alice") is not None, timeout=30, message="listed")
    net.login_server.manage("revoke_node", "hq")
    wait_for(
        lambda: status_on_branch(net, "alice") is None,
        timeout=30,
        message="alice gone from branch's users page",
    )
    worker_log = net.node("hq").processes["worker"]
    wait_for(
        lambda: "node_revoked" in worker_log.log_text(),
        timeout=30,
        message="hq's reports refused with node_revoked",
    )
