"""A real network for integration tests: Redis, a login server, nodes, workers and beat.

    with Network(tmp_path, nodes=("hq", "branch"), settings={...}) as net:
        secret = net.create_person("hq", "alice", PASSWORD)
        session = net.login("hq", "alice", PASSWORD, secret)

Every process is the production one (uvicorn, celery worker, celery beat) with its own
SQLite file; P2P_TEST_POSTGRES_URL (a server URL such as
postgresql://user@127.0.0.1:5433/postgres) switches every server to its own PostgreSQL
database on that server instead.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

import pyotp
import requests

from p2psocial import devnet
from tests.helpers.wait import wait_for

# Short intervals so presence, directory and retries move quickly in tests.
FAST_SETTINGS = {
    "P2P_PRESENCE_REPORT_INTERVAL_S": "1",
    "P2P_DIRECTORY_FETCH_INTERVAL_S": "1",
    "P2P_OUTBOX_SWEEP_INTERVAL_S": "1",
    "P2P_HEARTBEAT_INTERVAL_S": "2",
    "P2P_NODE_OFFLINE_AFTER_S": "6",
    "P2P_DELIVERY_BACKOFF_BASE_S": "0.5",
    "P2P_DELIVERY_BACKOFF_MAX_S": "2",
    "P2P_LOG_LEVEL": "INFO",
}

_CSRF = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


def _postgres_databases():
    """When P2P_TEST_POSTGRES_URL is set: a fresh database per server on that server."""
    server_url = os.environ.get("P2P_TEST_POSTGRES_URL")
    if not server_url:
        return None
    import psycopg

    run = uuid.uuid4().hex[:8]

    def database_url_for(name: str) -> str:
        db = f"p2ptest_{run}_{name}"
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{db}"')
        return server_url.rsplit("/", 1)[0] + "/" + db

    return database_url_for


class Network(devnet.Network):
    def __init__(self, root: Path, *, settings: Mapping[str, str] | None = None, **kwargs):
        merged = dict(FAST_SETTINGS)
        merged.update(settings or {})
        kwargs.setdefault("database_url_for", _postgres_databases())
        super().__init__(root, settings=merged, **kwargs)
        self._used_steps: dict[str, set[int]] = {}

    def create_person(
        self,
        node: str,
        username: str,
        password: str,
        *,
        full_name: str = "",
        position: str = "",
        staff: bool = False,
    ) -> str:
        """Create a person with a confirmed authenticator; returns its base32 secret."""
        secret = pyotp.random_base32()
        args = ["create_person", username, "--password-stdin", "--totp-secret", secret]
        args += ["--full-name", full_name or username.title(), "--position", position]
        if staff:
            args.append("--staff")
        self.node(node).manage(*args, input=password + "\n")
        return secret

    def totp_code(self, secret: str) -> str:
        """A code for a time step not used before by this secret (a code works once)."""
        used = self._used_steps.setdefault(secret, set())
        totp = pyotp.TOTP(secret)
        while True:
            step = int(time.time() // 30)
            for candidate in (step, step + 1):
                if candidate not in used:
                    used.add(candidate)
                    return totp.at(candidate * 30)
            # both steps in the drift window are spent: wait for the next step
            wait_for(lambda s=step: int(time.time() // 30) > s, timeout=31, message="next step")

    def login(self, node: str, username: str, password: str, secret: str) -> requests.Session:
        """Log in over HTTP exactly as a browser does: password, then the 6-digit code."""
        base = self.node(node).url
        session = requests.Session()
        page = session.get(f"{base}/login/", timeout=10)
        page.raise_for_status()
        response = session.post(
            f"{base}/login/",
            data={
                "csrfmiddlewaretoken": csrf_token(page.text),
                "username": username,
                "password": password,
            },
            timeout=10,
        )
        response.raise_for_status()
        if "/login/code/" not in response.url:
            raise AssertionError(f"password step did not lead to the code page: {response.url}")
        response = session.post(
            f"{base}/login/code/",
            data={"csrfmiddlewaretoken": csrf_token(response.text), "code": self.totp_code(secret)},
            timeout=10,
        )
        response.raise_for_status()
        if "/login/" in response.url:
            raise AssertionError(f"code step refused: {response.url}")
        return session


def csrf_token(html: str) -> str:
    match = _CSRF.search(html)
    if not match:
        raise AssertionError("no CSRF token in the page")
    return match.group(1)


__all__ = ["FAST_SETTINGS", "Network", "csrf_token", "wait_for"]
