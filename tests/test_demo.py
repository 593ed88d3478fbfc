"""The demo command itself, run as README says, in the runtime virtualenv (requirements.txt
alone): it is ready when it says so, people log in and talk, its administrators administer,
it rides out a dead Redis and a killed worker, and Ctrl-C ends every process it started.

One demo serves the whole module; the tests run in file order and the last one stops it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import threading
from pathlib import Path

import psutil
import pytest
import requests

from p2psocial.devnet import TotpCodes, csrf_token, login
from tests.helpers.browser import launch_chromium
from tests.helpers.runtime import runtime_python, runtime_venv
from tests.helpers.wait import wait_for

pytestmark = pytest.mark.demo

BASE_DIR = Path(__file__).resolve().parent.parent
READY_LINE = "p2psocial demo is ready. Ctrl-C stops it."


def free_port_base() -> int:
    """A --port-base whose four ports are free, below the kernel's ephemeral range.

    Client sockets of other tests take ports from 32768 up (Linux's default
    ip_local_port_range), so a base chosen there can collide with one of them.
    """
    offsets = (0, 1, 2, 390)
    for _ in range(50):
        base = random.randrange(20000, 32768 - 400, 10)
        try:
            for offset in offsets:
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", base + offset))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port base for the demo between 20000 and 32368")


class Demo:
    """`bin/demo` in a process of its own, its output collected line by line."""

    def __init__(self, data: Path):
        self.data = data
        self.lines: list[str] = []
        self.codes = TotpCodes()
        runtime_python()  # built (or found) before the clock of the readiness wait starts
        self.children: list[psutil.Process] = []
        self.facts: dict = {}
        self._start()

    def _start(self) -> None:
        self.lines = []
        self.process = subprocess.Popen(
            ["bash", str(BASE_DIR / "bin" / "demo"), "--data", str(self.data),
             "--port-base", str(free_port_base()), "--no-qr"],
            cwd=BASE_DIR, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "P2P_VENV": str(runtime_venv())},
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self) -> None:
        for attempt in range(3):
            wait_for(lambda: any(READY_LINE in line for line in self.lines)
                     or self.process.poll() is not None, timeout=300,
                     message="the demo says it is ready")  # fmt: skip
            # Another test's client may take a free port between the probe and the
            # demo's own check: the demo then names it and starts nothing, so start
            # again elsewhere (a demo that failed for any other reason fails the test).
            lost_race = self.process.poll() is not None and "already in use" in self.output
            if not lost_race or attempt == 2:
                break
            self._reader.join(timeout=10)
            self._start()
        assert self.process.poll() is None, self.output
        self.facts = json.loads((self.data / "demo.json").read_text())
        self.children = psutil.Process(self.process.pid).children(recursive=True)

    def url(self, server: str) -> str:
        if server == "login":
            return self.facts["login_server"]["url"]
        return self.facts["nodes"][server]["url"]

    def person(self, username: str) -> dict:
        return next(p for p in self.facts["people"] + self.facts["admins"]
                    if p["username"] == username)  # fmt: skip

    def login(self, username: str) -> requests.Session:
        who = self.person(username)
        code = self.codes.code(who["totp_secret"])
        return login(self.url(who["node"]), username, who["password"], code)

    def child(self, *words: str) -> psutil.Process:
        """The one process of the demo whose command line has all these words."""
        found = []
        for proc in psutil.Process(self.process.pid).children(recursive=True):
            try:
                cmdline = " ".join(proc.cmdline())
            except psutil.NoSuchProcess:
                continue
            if all(word in cmdline for word in words):
                found.append(proc)
        assert len(found) == 1, [p.cmdline() for p in found]
        return found[0]

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            self.process.kill()
            for child in psutil.Process(self.process.pid).children(recursive=True):
                child.kill()
            raise
        finally:
            self._reader.join(timeout=10)
        return self.process.returncode


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    demo = Demo(tmp_path_factory.mktemp("demo") / "data")
    try:
        demo.wait_ready()
        yield demo
    finally:
        if demo.process.poll() is None:
            demo.stop()
        for child in demo.children:
            if child.is_running():
                child.kill()


def send(session: requests.Session, chat_url: str, text: str) -> None:
    page = session.get(chat_url, timeout=10)
    assert page.status_code == 200, page.text[:300]
    sent = session.post(chat_url, data={"csrfmiddlewaretoken": csrf_token(page.text),
                                        "text": text}, timeout=10)  # fmt: skip
    assert sent.status_code == 200


def conversation(session: requests.Session, chat_url: str) -> list[dict]:
    """Every message of the conversation, each with the status its owner sees."""
    answer = session.get(f"{chat_url}messages.json?after=0", timeout=10).json()
    return [
        {**m, "status": answer["statuses"].get(str(m["id"]), m["status"])}
        for m in answer["messages"]
    ]


def test_it_says_ready_only_when_each_office_lists_the_others_people(demo):
    ready_at = next(i for i, line in enumerate(demo.lines) if READY_LINE in line)
    table_at = next(i for i, line in enumerate(demo.lines) if "carol (on branch" in line)
    assert table_at < ready_at
    assert len(demo.children) >= 8  # redis, login web, and web + worker + beat per node
    admins = {a["username"]: a for a in demo.facts["admins"]}
    assert admins["hq-it"]["role"] == "office administrator"
    assert admins["netadmin"]["role"] == "login server administrator"
    assert all(a["otpauth_uri"].startswith("otpauth://totp/") for a in admins.values())
    assert "netadmin" in demo.output and "/admin/" in demo.output

    # Right away, no waiting: alice's office already knows carol's and dave's.
    session = demo.login("alice")
    users = session.get(f"{demo.url('hq')}/users/", timeout=10).text
    assert "Carol Nguyễn" in users and "Dávid Kovács" in users


def test_a_person_logs_in_and_a_message_crosses_to_the_other_office(demo):
    alice = demo.login("alice")
    picture = alice.get(f"{demo.url('hq')}/people/bob/picture", timeout=10)
    assert picture.status_code == 200
    assert picture.headers["Content-Type"].startswith("image/")

    text = "Hello from HQ 👋"
    send(alice, f"{demo.url('hq')}/chat/carol/", text)
    wait_for(lambda: [m["status"] for m in conversation(alice, f"{demo.url('hq')}/chat/carol/")
                      if m["text"] == text] in (["delivered"], ["read"]),
             timeout=60, message="alice sees her message delivered to carol")  # fmt: skip

    carol = demo.login("carol")
    received = conversation(carol, f"{demo.url('branch')}/chat/alice/")
    assert [m["text"] for m in received] == [text]


def admin_login(page, base: str, who: dict, code: str) -> None:
    page.goto(f"{base}/admin/login/?next=/admin/")
    page.fill("input[name=username]", who["username"])
    page.fill("input[name=password]", who["password"])
    page.fill("input[name=otp_token]", code)
    page.click("input[type=submit]")
    page.wait_for_load_state()


def test_the_administrators_open_their_admin_pages_in_chromium(demo):
    hq, login_server = demo.url("hq"), demo.url("login")
    with launch_chromium() as browser:
        page = browser.new_page()
        office_admin = demo.person("hq-it")
        admin_login(page, hq, office_admin, demo.codes.code(office_admin["totp_secret"]))
        assert page.url.endswith("/admin/"), page.content()[:500]
        for path, heading in [
            ("/admin/accounts/user/", "alice"),
            ("/admin/messaging/outbox/", "outbox"),
            ("/admin/peers/peernode/", "branch"),
            ("/admin/health/", "worker_heartbeat_age_s"),
        ]:
            response = page.goto(hq + path)
            assert response.status == 200, path
            assert heading in page.content(), path

        page = browser.new_page()
        network_admin = demo.person("netadmin")
        admin_login(page, login_server, network_admin,
                    demo.codes.code(network_admin["totp_secret"]))  # fmt: skip
        assert page.url.endswith("/admin/"), page.content()[:500]
        for path, heading in [
            ("/admin/loginserver/node/", "branch"),
            ("/admin/loginserver/enrolmenttoken/", "enrolment token"),
            ("/admin/loginserver/enrolmenttoken/add/", "Node name"),
        ]:
            response = page.goto(login_server + path)
            assert response.status == 200, path
            assert heading in page.content(), path

        page = browser.new_page()
        bob = demo.person("bob")
        admin_login(page, hq, bob, demo.codes.code(bob["totp_secret"]))
        assert "/admin/login/" in page.url
        assert "staff account" in page.content()
        assert page.goto(f"{hq}/admin/accounts/user/").url.startswith(f"{hq}/admin/login/")


def test_messages_survive_a_killed_redis_and_a_killed_worker_and_arrive_once(demo):
    bob = demo.login("bob")
    chat = f"{demo.url('hq')}/chat/dave/"
    texts = [f"fault run {i} ✓" for i in range(30)]
    for text in texts:
        send(bob, chat, text)
    # While those deliveries are queued or in flight, Redis and hq's worker die.
    demo.child("redis-server").kill()
    demo.child("celery", "worker", "--hostname hq@").kill()

    wait_for(lambda: "redis restarted" in demo.output and "hq-worker restarted" in demo.output,
             timeout=90, message="the demo restarts Redis and hq's worker")  # fmt: skip
    assert "redis exited unexpectedly (signal SIGKILL)" in demo.output
    assert "hq-worker exited unexpectedly (signal SIGKILL)" in demo.output

    def delivered() -> bool:
        mine = [m for m in conversation(bob, chat) if m["text"] in texts]
        return len(mine) == len(texts) and all(m["status"] == "delivered" for m in mine)

    wait_for(delivered, timeout=180, interval=1, message="every message shows delivered")
    dave = demo.login("dave")
    received = [m["text"] for m in conversation(dave, f"{demo.url('branch')}/chat/bob/")]
    assert sorted(received) == sorted(texts)  # each once: none lost, none twice


def test_ctrl_c_stops_every_process_the_demo_started(demo):
    children = psutil.Process(demo.process.pid).children(recursive=True)
    assert len(children) >= 8
    assert demo.stop() == 0, demo.output
    assert demo.lines[-1].endswith("stopped."), demo.output

    def gone() -> bool:
        return not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]

    wait_for(gone, timeout=10, message="no process of the demo is left")


def test_a_taken_port_is_named_and_nothing_is_started(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        hq_port = taken.getsockname()[1]
        result = subprocess.run(
            [runtime_python(), "-m", "p2psocial.demo", "--data", str(tmp_path / "data"),
             "--port-base", str(hq_port - 1), "--no-qr"],
            cwd=BASE_DIR, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 1
    # (a neighbouring port may happen to be taken as well: it is then named too)
    assert f"{hq_port} (hq)" in result.stderr and "already in use" in result.stderr
    assert "Try --port-base" in result.stderr
    assert not (tmp_path / "data" / "demo.json").exists()
