"""The event stream on a real node (uvicorn, the ASGI BodyLimit, Redis, worker and beat):
each person's open stream gets their own events and the node-wide ones and nothing of
anyone else's, a reconnect with the last id gets exactly what it missed, a stream the
browser left frees its Redis connection, and no session, or a logged-out one, gets none.

Events are published from `manage.py shell` in the node's environment, as a worker would.
"""

from __future__ import annotations

import json
import queue
import threading

import pytest
import redis
import requests

from tests.helpers.chat import people_on
from tests.helpers.sse import sse_blocks
from tests.network import Network, csrf_token, wait_for

pytestmark = pytest.mark.integration

PASSWORD = "a long enough passphrase 42"
HEARTBEAT_S = 1
WAIT_S = 20.0


class LiveStream:
    """GET /events/ held open by a thread, as a browser's EventSource holds it."""

    def __init__(self, session: requests.Session, base_url: str, last_id: str | None = None):
        headers = {"Accept": "text/event-stream"}
        if last_id:
            headers["Last-Event-ID"] = last_id
        self.response = session.get(
            f"{base_url}/events/", headers=headers, stream=True, timeout=(5, 5 * HEARTBEAT_S)
        )
        self.blocks: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        text = ""
        try:
            for chunk in self.response.iter_content(chunk_size=None):
                if self._stop.is_set():  # a keepalive comes every HEARTBEAT_S at least
                    break
                head, sep, text = (text + chunk.decode()).rpartition("\n\n")
                for block in sse_blocks(head + sep):
                    self.blocks.put(block)
        except requests.RequestException:
            pass
        finally:
            self.response.close()
            self.blocks.put(None)

    def next_block(self, timeout_s: float = WAIT_S) -> dict | None:
        try:
            return self.blocks.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"nothing on the stream within {timeout_s} s") from None

    def event(self, timeout_s: float = WAIT_S) -> dict:
        """The next event (keepalives skipped)."""
        while True:
            block = self.next_block(timeout_s)
            assert block is not None, "the stream ended"
            if "event" in block:
                return block

    def events_until_quiet(self) -> list[dict]:
        """Every event until a keepalive says nothing more is waiting."""
        seen = []
        while "event" in (block := self.next_block()):
            seen.append(block)
        return seen

    def close(self) -> None:
        """Leave, as a closed tab does: the connection is dropped."""
        self._stop.set()
        self._thread.join(timeout=WAIT_S)
        assert not self._thread.is_alive()


def publish(net: Network, script: str) -> None:
    """Run script in the node's `manage.py shell`, with `events` and `ids` (by username)."""
    prelude = (
        "from accounts.models import User\n"
        "from p2psocial import events\n"
        "ids = dict(User.objects.values_list('username', 'pk'))\n"
    )
    net.node("hq").manage("shell", "-c", prelude + script)


def payload(event: dict) -> tuple[str, dict]:
    return event["event"], json.loads(event["data"])


def open_stream(net: Network, user: str, last_id: str | None = None) -> tuple[LiveStream, dict]:
    stream = LiveStream(net.sessions[user], net.node("hq").url, last_id)
    assert stream.response.status_code == 200, stream.response.text
    return stream, stream.event()


def xread_connections(net: Network) -> int:
    """Redis connections of hq blocked in (or last used for) XREAD: one per open stream."""
    node = net.node("hq")
    db = node.redis_url.rsplit("/", 1)[1]
    clients = redis.Redis.from_url(node.redis_url).client_list()
    return sum(1 for c in clients if c.get("db") == db and c.get("cmd") == "xread")


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    with Network(
        tmp_path_factory.mktemp("events"),
        nodes=("hq",),
        settings={"P2P_EVENT_HEARTBEAT_S": str(HEARTBEAT_S)},
    ) as network:
        people_on(network, {"alice": "hq", "bob": "hq"}, PASSWORD)
        yield network


def ours(event: tuple[str, dict]) -> bool:
    """An event this module published (not the node's own presence.changed)."""
    return event[0].startswith("test.")


def test_each_person_gets_their_own_events_and_the_node_wide_ones_only(net):
    alice, ready = open_stream(net, "alice")
    bob, _ = open_stream(net, "bob")
    try:
        assert alice.response.headers["Content-Type"] == "text/event-stream"
        assert alice.response.headers["Cache-Control"] == "no-store"
        assert alice.response.headers["X-Accel-Buffering"] == "no"
        assert ready["event"] == "ready"
        publish(
            net,
            "events.publish(ids['alice'], 'test.ping', {'to': 'alice'})\n"
            "events.publish(ids['bob'], 'test.ping', {'to': 'bob'})\n"
            "events.publish_all('test.presence', {'user': 'carol', 'status': 'online'})\n",
        )
        # The node's own events (presence.changed at a login) may come in between.
        seen = {
            name: [p for p in (payload(stream.event()), payload(stream.event())) if ours(p)]
            + [p for p in map(payload, stream.events_until_quiet()) if ours(p)]
            for name, stream in (("alice", alice), ("bob", bob))
        }
    finally:
        alice.close()
        bob.close()

    everyone = ("test.presence", {"user": "carol", "status": "online"})
    assert seen == {
        "alice": [("test.ping", {"to": "alice"}), everyone],
        "bob": [("test.ping", {"to": "bob"}), everyone],
    }


def test_a_reconnect_with_the_last_id_gets_exactly_the_missed_events(net):
    alice, _ = open_stream(net, "alice")
    try:
        publish(net, "events.publish(ids['alice'], 'test.n', {'n': 1})\n")
        first = alice.event()
        while not ours(payload(first)):  # the node's own presence.changed, if any
            first = alice.event()
    finally:
        alice.close()
    publish(
        net,
        "events.publish(ids['alice'], 'test.n', {'n': 2})\n"
        "events.publish(ids['bob'], 'test.n', {'n': 99})\n"
        "events.publish(ids['alice'], 'test.n', {'n': 3})\n",
    )

    again, ready = open_stream(net, "alice", last_id=first["id"])
    try:
        missed = again.events_until_quiet()
    finally:
        again.close()

    assert payload(first) == ("test.n", {"n": 1})
    assert ready["event"] == "ready"
    assert [p for p in map(payload, missed) if ours(p)] == [
        ("test.n", {"n": 2}),
        ("test.n", {"n": 3}),
    ]


def test_a_stream_the_browser_left_frees_its_redis_connection(net):
    before = xread_connections(net)
    alice, _ = open_stream(net, "alice")
    try:
        wait_for(
            lambda: xread_connections(net) == before + 1,
            timeout=WAIT_S,
            message="the open stream reads Redis",
        )
    finally:
        alice.close()

    wait_for(
        lambda: xread_connections(net) == before,
        timeout=WAIT_S,
        message="the left stream's Redis connection closed",
    )


def test_without_a_session_or_with_the_password_only_there_is_no_stream(net):
    url = net.node("hq").url + "/events/"
    anonymous = requests.get(url, headers={"Accept": "text/event-stream"}, timeout=10)
    session = requests.Session()
    page = session.get(net.node("hq").url + "/login/", timeout=10)
    session.post(
        page.url,
        data={"csrfmiddlewaretoken": csrf_token(page.text), "username": "bob",
              "password": PASSWORD},
        timeout=10,
    )  # fmt: skip
    password_only = session.get(url, headers={"Accept": "text/event-stream"}, timeout=10)

    for answer in (anonymous, password_only):
        assert answer.status_code == 401
        assert answer.json()["error"]["code"] == "login_required"


def test_a_logged_out_session_cannot_reconnect(net):
    secret = net.create_person("hq", "carol", PASSWORD)
    session = net.login("hq", "carol", PASSWORD, secret)
    base = net.node("hq").url
    stream = LiveStream(session, base)
    try:
        last_id = stream.event()["id"]
    finally:
        stream.close()
    page = session.get(base + "/logout/", timeout=10)
    session.post(base + "/logout/", data={"csrfmiddlewaretoken": csrf_token(page.text)}, timeout=10)

    again = session.get(
        base + "/events/",
        headers={"Accept": "text/event-stream", "Last-Event-ID": last_id},
        timeout=10,
    )

    assert again.status_code == 401
