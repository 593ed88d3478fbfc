"""End to end: two offices that chose one username. The first keeps it; the second keeps
reporting everyone else and shows which name was refused. Real login server, nodes,
workers, beat and Redis."""

import json

import pytest

from tests.network import Network, wait_for

pytestmark = pytest.mark.integration

PASSWORD = "a long enough passphrase 42"
PROBE = (
    "import json; from peers.models import DirectorySync, DirectoryUser; "
    "sync = DirectorySync.objects.filter(pk=1).first(); "
    "print(json.dumps({'refused': sync.refused_usernames if sync else None, "
    "'listed': dict(DirectoryUser.objects.filter(listed=True)"
    ".values_list('username', 'node__name'))}))"
)


def probe(net, node: str) -> dict:
    result = net.node(node).manage("shell", "-c", PROBE)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_name_taken_by_two_offices_stays_with_the_first_and_the_second_keeps_reporting(
    tmp_path,
):
    with Network(tmp_path, nodes=("hq", "branch")) as net:
        # branch fetches no directory meanwhile, so it cannot know that hq took the name
        # (create_person refuses a name the directory shows at another office): two
        # offices choosing one name at about the same time.
        branch = net.node("branch")
        branch.stop_beat()
        branch.stop_worker()
        net.create_person("hq", "alice", PASSWORD, full_name="Alice Hq")
        wait_for(
            lambda: probe(net, "hq")["listed"].get("alice") == "hq",
            timeout=60,
            message="hq's alice in hq's directory",
        )
        net.create_person("branch", "alice", PASSWORD, full_name="Alice Branch")
        net.create_person("branch", "bob", PASSWORD, full_name="Bob Branch")
        branch.start_worker()
        branch.start_beat()

        refused = [{"username": "alice", "code": "user_owned_by_other_node"}]
        # branch does not take hq's alice into its directory either: it has an alice of its
        # own, and another node's record may not speak in a local name there.
        wait_for(
            lambda: probe(net, "branch") == {"refused": refused, "listed": {"bob": "branch"}},
            timeout=60,
            message="branch's bob listed, its alice refused and kept as refused",
        )
        wait_for(
            lambda: probe(net, "hq")["listed"] == {"alice": "hq", "bob": "branch"},
            timeout=60,
            message="hq sees its alice and branch's bob",
        )
