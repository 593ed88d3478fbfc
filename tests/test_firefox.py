"""The main flows in Debian's Firefox ESR too, across two live offices (uvicorn, Celery
workers and beat, Redis): tests/firefox/flows.mjs drives firefox-esr over WebDriver BiDi
with puppeteer-core (bin/setup --dev installs both) and this test plays the other person.

Alice logs in on hq with her password and a code, finds Carol's message counted on her
conversations home, opens the conversation, answers through the compose form, and sees
Carol's next message arrive without a reload."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.helpers.chat import people_on, send, status_of, texts, wait_until_listed
from tests.network import Network, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.browser]

ROOT = Path(__file__).resolve().parent.parent
FLOWS = ROOT / "tests" / "firefox" / "flows.mjs"
PUPPETEER = ROOT / "tests" / "firefox" / "node_modules" / "puppeteer-core"
FIREFOX = Path("/usr/bin/firefox-esr")
PASSWORD = "a long enough passphrase 42"
WAIT_MS = 15_000  # each page load or element the script waits for
PUSHED_MS = 8_000  # well under the 30 s safety poll of an open stream: it came pushed
RUN_TIMEOUT_S = 120  # the whole script, Firefox's start included

RECEIVED = "carol asks: lunch on Friday?"
SENT = "alice answers from Firefox: yes, at noon"
LIVE = "carol, pushed to alice's open Firefox page"


def artifacts_dir() -> Path:
    """Where browser tests leave files to look at: P2P_TEST_ARTIFACTS or test-artifacts/."""
    return Path(os.environ.get("P2P_TEST_ARTIFACTS") or ROOT / "test-artifacts")


def require_firefox_tools() -> None:
    """Skip without firefox-esr, node or puppeteer-core, except in CI, where it fails."""
    missing = [
        name
        for name, present in (
            (str(FIREFOX), FIREFOX.exists()),
            ("node", shutil.which("node") is not None),
            (str(PUPPETEER.relative_to(ROOT)), PUPPETEER.is_dir()),
        )
        if not present
    ]
    if missing:
        message = f"missing for the Firefox tests: {', '.join(missing)} (bin/setup --dev)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)  # a dev machine without them; CI fails above instead


class FlowsRun:
    """node flows.mjs as a child process: its JSON lines one at a time, each with a
    deadline; the whole process group (node and its Firefox) is killed if it overruns."""

    def __init__(self, facts: dict, *, stderr_path: Path):
        self.deadline = time.monotonic() + RUN_TIMEOUT_S
        self.stderr = stderr_path.open("wb")
        self.process = subprocess.Popen(
            ["node", str(FLOWS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            cwd=ROOT,
            start_new_session=True,
        )
        self.lines: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.process.stdin.write(json.dumps(facts).encode())
        self.process.stdin.close()
        self.events: list[dict] = []
        self.stderr_path = stderr_path

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(b"")

    def next_event(self) -> dict | None:
        """The script's next JSON line, or None once it has closed its output."""
        try:
            line = self.lines.get(timeout=max(0.0, self.deadline - time.monotonic()))
        except queue.Empty:
            self.kill()
            pytest.fail(f"flows.mjs gave no answer within {RUN_TIMEOUT_S} s: {self.report()}")
        if not line:
            return None
        event = json.loads(line)
        self.events.append(event)
        return event

    def until(self, kind: str) -> dict:
        """Read up to the first event of this kind; fail on "failed" or the end."""
        while (event := self.next_event()) is not None:
            if event["event"] == kind:
                return event
            if event["event"] == "failed":
                break
        self.finish()
        pytest.fail(f"flows.mjs stopped before {kind!r}: {self.report()}")

    def finish(self) -> int:
        try:
            return self.process.wait(timeout=max(1.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"flows.mjs did not exit within {RUN_TIMEOUT_S} s: {self.report()}")
        finally:
            self.stderr.close()

    def kill(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)

    def report(self) -> str:
        stderr = self.stderr_path.read_text(errors="replace")[-2000:]
        return f"events {json.dumps(self.events, indent=1)}\nstderr {stderr}"


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    require_firefox_tools()
    with Network(tmp_path_factory.mktemp("firefox"), nodes=("hq", "branch")) as network:
        network.secrets = people_on(network, {"alice": "hq", "carol": "branch"}, PASSWORD)
        wait_until_listed(network, [("alice", "carol"), ("carol", "alice")])
        yield network


def test_login_the_conversations_home_sending_and_a_live_update_work_in_firefox(net, tmp_path):
    send(net, "carol", "alice", RECEIVED)
    wait_for(
        lambda: status_of(net, "carol", "alice", RECEIVED) == "delivered",
        timeout=30,
        message="carol's first message reaches alice's office",
    )
    run = FlowsRun(
        {
            "base_url": net.node("hq").url,
            "username": "alice",
            "password": PASSWORD,
            "code": net.totp_code(net.secrets["alice"]),  # a step not used by any login yet
            "peer": "carol",
            "received_text": RECEIVED,
            "sent_text": SENT,
            "live_text": LIVE,
            "wait_ms": WAIT_MS,
            "pushed_ms": PUSHED_MS,
            "artifacts": str(artifacts_dir()),
        },
        stderr_path=tmp_path / "flows.stderr",
    )

    run.until("waiting")  # alice's conversation is open in Firefox, its stream too
    send(net, "carol", "alice", LIVE)
    done = run.until("done")

    assert run.finish() == 0, run.report()
    steps = [e["name"] for e in run.events if e["event"] == "step"]
    assert steps == [
        "password",
        "code",
        "conversations home",
        "open the conversation",
        "send",
        "live update",
    ]
    assert done["browser"].startswith("firefox/")
    assert done["home_row"] == {"unread": "1", "last": RECEIVED}
    assert done["dialogs"] == []
    assert done["console_errors"] == []
    # what alice typed in Firefox reached carol's office; the page that showed carol's
    # messages marked them read
    wait_for(
        lambda: SENT in texts(net, "carol", "alice", "in"),
        timeout=30,
        message="alice's answer reaches carol",
    )
    wait_for(
        lambda: status_of(net, "carol", "alice", LIVE) == "read",
        timeout=30,
        message="carol sees read once alice's Firefox page showed her message",
    )
