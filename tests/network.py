"""A real network for integration tests: Redis, a login server, nodes, workers and beat.

    with Network(tmp_path, nodes=("hq", "branch"), settings={...}) as net:
        secret = net.create_person("hq", "alice", PASSWORD)
        session = net.login("hq", "alice", PASSWORD, secret)

The processes are the production ones, started by p2psocial/devnet.py (the demo's and
the benchmark's too), each server with its own SQLite file; P2P_TEST_POSTGRES_URL (a
server URL such as postgresql://user@127.0.0.1:5433/postgres) switches every server to
its own fresh PostgreSQL database on that server instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from pathlib import Path

from p2psocial import devnet
from p2psocial.devnet import csrf_token
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


__all__ = ["FAST_SETTINGS", "Network", "csrf_token", "wait_for"]
