"""Writers at once on one office's SQLite, with real processes: the node's web process and
worker (sending, receiving, delivering, presence), an office administrator saving people
in the admin over HTTP, and a management shell writing person rows in a loop, outside the
writer queue. Nobody sees "database is locked" or a 500, and every message arrives once.

The writers run P2P_TEST_WRITERS_S seconds (18 by default); the slow mode runs a minute:

    P2P_TEST_WRITERS_S=60 .venv/bin/python -m pytest tests/test_storage_concurrent_writers.py
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import requests

from p2psocial.devnet import BASE_DIR
from tests.helpers.chat import chat_page, people_on, url, wait_until_listed
from tests.helpers.storage import form_fields, replaced
from tests.network import Network, csrf_token, wait_for

pytestmark = pytest.mark.integration

PASSWORD = "a long enough passphrase 42"
WRITERS_S = float(os.environ.get("P2P_TEST_WRITERS_S") or 18)
STAFF = [f"staff{n}" for n in range(4)]  # the people the administrators keep editing
LOCKED = "database is locked"
HTTP_TIMEOUT_S = 60  # each request of a writer, while the others write too

# A management shell that rewrites the staff's person rows, one short transaction per
# row and a whole-office pass now and then, as an import script would: writes outside the
# writer queue. It stops by itself after the given seconds.
_SHELL_WRITER = """
import time
from django.db import transaction
from accounts.models import Profile, User
end = time.monotonic() + {seconds}
passes = 0
while time.monotonic() < end:
    passes += 1
    for profile in Profile.objects.filter(user__username__startswith="staff"):
        with transaction.atomic():
            profile.description = f"imported {{passes}}"
            profile.save(update_fields=["description"])
    with transaction.atomic():
        User.objects.filter(username__startswith="staff").update(first_name=f"p{{passes}}")
    time.sleep(0.01)
print("shell writer passes", passes)
"""


class Answers:
    """Every HTTP answer the people saw, by what they did; 500s kept with their text."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.failures: list[str] = []
        self._lock = threading.Lock()

    def saw(self, what: str, response: requests.Response, *, ok: tuple[int, ...]) -> bool:
        with self._lock:
            self.counts[f"{what} {response.status_code}"] += 1
            if response.status_code not in (*ok, 503) or LOCKED in response.text:
                self.failures.append(f"{what}: {response.status_code} {page_text(response)}")
        return response.status_code in ok


def page_text(response: requests.Response) -> str:
    """What the page says, without its markup (its head and navigation left out)."""
    body = response.text.split("<body", 1)[-1]
    return " ".join(re.sub(r"<[^>]+>", " ", body).split())[:600]


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    with Network(tmp_path_factory.mktemp("writers"), nodes=("hq", "branch")) as network:
        homes = {"alice": "hq", "bob": "branch", "olga": "hq"}
        secrets = people_on(network, homes, PASSWORD, admins={"olga"})
        for name in STAFF:
            network.create_person("hq", name, PASSWORD, position="Clerk")
        network.admin = admin_session(network, "olga", secrets["olga"])
        wait_until_listed(
            network, [("alice", "bob"), ("bob", "alice")], http_timeout_s=HTTP_TIMEOUT_S
        )
        yield network


def admin_session(net, username: str, secret: str) -> requests.Session:
    """An office administrator logged in to hq's admin over HTTP (password and code)."""
    session = requests.Session()
    login = net.node("hq").url + "/admin/login/?next=/admin/"
    page = session.get(login, timeout=10)
    answer = session.post(
        login,
        data={
            "csrfmiddlewaretoken": csrf_token(page.text),
            "username": username,
            "password": PASSWORD,
            "otp_token": net.totp_code(secret),
            "next": "/admin/",
        },
        timeout=10,
        allow_redirects=False,
    )
    assert answer.status_code == 302, answer.text[:500]
    return session


def staff_change_urls(net) -> list[str]:
    page = net.admin.get(net.node("hq").url + "/admin/accounts/user/?q=staff", timeout=10)
    ids = sorted(set(_change_ids(page.text)))
    assert len(ids) == len(STAFF), page.text[:500]
    return [f"{net.node('hq').url}/admin/accounts/user/{pk}/change/" for pk in ids]


def _change_ids(html: str) -> list[int]:
    return [int(pk) for pk in re.findall(r"/admin/accounts/user/(\d+)/change/", html)]


def received(net, user: str, peer: str) -> list[str]:
    """The texts user received from peer, every page of the conversation."""
    texts, after = [], 0
    while True:
        answer = net.sessions[user].get(
            url(net, user, f"/chat/{peer}/messages.json?after={after}"), timeout=30
        )
        assert answer.status_code == 200, answer.text[:300]
        page = answer.json()["messages"]
        if not page:
            return texts
        texts += [m["text"] for m in page if m["direction"] == "in"]
        after = page[-1]["id"]


def send_until(net, answers: Answers, user: str, peer: str, deadline: float) -> list[str]:
    """user sends numbered messages through the compose form until deadline; a "busy, try
    again" page is tried again after its Retry-After, as a person would."""
    sent: list[str] = []
    while time.monotonic() < deadline:
        text = f"{user} to {peer} #{len(sent)}"
        page = chat_page(net, user, peer, http_timeout_s=HTTP_TIMEOUT_S)
        if not answers.saw(f"{user} opens the chat", page, ok=(200,)):
            time.sleep(float(page.headers.get("Retry-After", 1)))
            continue
        answer = net.sessions[user].post(
            url(net, user, f"/chat/{peer}/"),
            data={"csrfmiddlewaretoken": csrf_token(page.text), "text": text},
            timeout=HTTP_TIMEOUT_S,
            allow_redirects=False,
        )
        if answers.saw(f"{user} sends", answer, ok=(302,)):
            sent.append(text)
        else:
            time.sleep(float(answer.headers.get("Retry-After", 1)))
    return sent


def edit_people_until(net, answers: Answers, deadline: float) -> int:
    """The administrator opens a person's change form and saves a new position, in turn."""
    urls, saved = staff_change_urls(net), 0
    while time.monotonic() < deadline:
        change = urls[saved % len(urls)]
        page = net.admin.get(change, timeout=60)
        if not answers.saw("the admin opens a person", page, ok=(200,)):
            time.sleep(float(page.headers.get("Retry-After", 1)))
            continue
        fields = replaced(form_fields(page.text), profile__0__position=f"Clerk {saved}")
        answer = net.admin.post(
            change, data=[*fields, ("_continue", "1")], timeout=60, allow_redirects=False
        )
        if answers.saw("the admin saves a person", answer, ok=(302,)):
            saved += 1
        else:
            time.sleep(float(answer.headers.get("Retry-After", 1)))
    return saved


def start_shell_writer(net, seconds: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(BASE_DIR / "manage.py"), "shell", "-c",
         textwrap.dedent(_SHELL_WRITER.format(seconds=seconds))],
        env=net.node("hq").env,
        cwd=BASE_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip


def test_writers_at_once_never_see_a_locked_database_and_every_message_arrives_once(net):
    answers = Answers()
    deadline = time.monotonic() + WRITERS_S
    shell = start_shell_writer(net, WRITERS_S)
    results: dict[str, object] = {}

    def run(name, work, *args):
        results[name] = work(net, answers, *args, deadline)

    threads = [
        threading.Thread(target=run, args=("alice", send_until, "alice", "bob")),
        threading.Thread(target=run, args=("bob", send_until, "bob", "alice")),
        threading.Thread(target=run, args=("admin", edit_people_until)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=WRITERS_S + 180)
    shell_output, _ = shell.communicate(timeout=WRITERS_S + 120)

    assert not answers.failures, answers.failures[:5]
    assert shell.returncode == 0 and LOCKED not in shell_output, shell_output[-2000:]
    assert "shell writer passes" in shell_output
    assert results["admin"] > 0, answers.counts
    sent_by_alice, sent_by_bob = results["alice"], results["bob"]
    assert sent_by_alice and sent_by_bob, answers.counts
    wait_for(
        lambda: (
            sorted(received(net, "bob", "alice")) == sorted(sent_by_alice)
            and sorted(received(net, "alice", "bob")) == sorted(sent_by_bob)
        ),
        timeout=90,
        interval=1,
        message="every message sent during the run arrived exactly once",
    )
    for process in net.processes():
        log = process.log_text()
        assert LOCKED not in log, f"{process.name}: {process.log_path}"
        assert "Internal Server Error" not in log, f"{process.name}: {process.log_path}"
    print(f"\n{dict(sorted(answers.counts.items()))} admin saves {results['admin']}")
