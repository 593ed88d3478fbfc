"""The demo command itself: it starts a network, people can log in and talk, Ctrl-C ends it."""

from __future__ import annotations

import json
import random
import signal
import subprocess
from pathlib import Path

import psutil
import pyotp
import pytest
import requests

from tests.network import csrf_token, wait_for

pytestmark = pytest.mark.demo

BASE_DIR = Path(__file__).resolve().parent.parent


def healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def login(base: str, username: str, password: str, secret: str) -> requests.Session:
    session = requests.Session()
    page = session.get(f"{base}/login/", timeout=10)
    page = session.post(
        f"{base}/login/",
        data={"csrfmiddlewaretoken": csrf_token(page.text), "username": username,
              "password": password},
        timeout=10,
    )  # fmt: skip
    assert "/login/code/" in page.url
    page = session.post(
        f"{base}/login/code/",
        data={"csrfmiddlewaretoken": csrf_token(page.text), "code": pyotp.TOTP(secret).now()},
        timeout=10,
    )
    assert page.status_code == 200 and "/login" not in page.url, page.url
    return session


def test_the_demo_runs_a_network_where_people_log_in_and_talk_and_ctrl_c_stops_it(tmp_path):
    port_base = random.randrange(20000, 40000, 10)
    data = tmp_path / "demo"
    demo = subprocess.Popen(
        ["bash", str(BASE_DIR / "bin" / "demo"), "--data", str(data),
         "--port-base", str(port_base), "--no-qr"],
        cwd=BASE_DIR, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    children: list[psutil.Process] = []
    try:
        facts_file = data / "demo.json"
        wait_for(lambda: facts_file.exists() or demo.poll() is not None, timeout=180,
                 message="the demo writes demo.json")  # fmt: skip
        assert demo.poll() is None, demo.stdout.read()
        facts = json.loads(facts_file.read_text())
        urls = [facts["login_server"]["url"]] + [n["url"] for n in facts["nodes"].values()]
        wait_for(lambda: all(healthy(u) for u in urls), timeout=90,
                 message="every server answers /health with 200")  # fmt: skip
        children = psutil.Process(demo.pid).children(recursive=True)
        assert len(children) >= 8  # redis, login web, and web + worker + beat per node

        people = {p["username"]: p for p in facts["people"]}
        alice, carol = people["alice"], people["carol"]
        assert alice["node"] == "hq" and carol["node"] == "branch"
        assert alice["otpauth_uri"].startswith("otpauth://totp/")
        hq = facts["nodes"]["hq"]["url"]
        session = login(hq, "alice", alice["password"], alice["totp_secret"])

        picture = session.get(f"{hq}/people/bob/picture", timeout=10)
        assert picture.status_code == 200
        assert picture.headers["Content-Type"].startswith("image/")

        chat = f"{hq}/chat/carol/"
        wait_for(lambda: session.get(chat, timeout=10).status_code == 200, timeout=60,
                 message="hq's directory lists carol")  # fmt: skip
        text = "Hello from HQ 👋"
        page = session.get(chat, timeout=10)
        sent = session.post(chat, data={"csrfmiddlewaretoken": csrf_token(page.text),
                                        "text": text}, timeout=10)  # fmt: skip
        assert sent.status_code == 200

        def status() -> str | None:
            answer = session.get(f"{chat}messages.json?after=0", timeout=10).json()
            for message in answer["messages"]:
                if message["text"] == text:
                    return answer["statuses"].get(str(message["id"]), message["status"])
            return None

        wait_for(lambda: status() in {"delivered", "read"}, timeout=60,
                 message="alice sees her message delivered to carol")  # fmt: skip
    finally:
        if demo.poll() is None:
            demo.send_signal(signal.SIGINT)
        try:
            output, _ = demo.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            demo.kill()
            output, _ = demo.communicate()
            for child in children:
                child.kill()
            raise

    assert demo.returncode == 0, output
    assert "stopped." in output
    assert "carol" in output and "otpauth://" in output
    assert children, output
    left = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert left == [], [c.cmdline() for c in left]
