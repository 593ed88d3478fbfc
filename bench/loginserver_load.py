"""Login server load: signed presence reports from many nodes, and the 304 directory path.

Run by bench/run.py with the login server's environment (same database): it enrols
the bench nodes directly in that database, then talks to the login server over HTTP
exactly as nodes do. The last line of its output is a JSON object of figures.

The client shares the machine's cores with the server, so its own cost is kept small
(in production every node signs on its own machine): the timed reports are built and
signed just before the timed phase (fresh timestamps, one fresh nonce each, well inside
the server's window) and sent from several client processes over plain keep-alive
http.client connections. The server still parses, verifies and stores every one of them.
The 304 figure is measured with requests, the HTTP client nodes use.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import statistics
import threading
import time
from urllib.parse import urlsplit

import django
import requests

REPORT_PATH = "/api/v1/report"


def _send_all(url: str, batch: list[tuple[bytes, str]], threads: int) -> int:
    """POST every prepared report over `threads` keep-alive connections; the error count."""
    parts = urlsplit(url)
    pending = iter(batch)
    lock = threading.Lock()
    errors = 0

    def run() -> None:
        nonlocal errors
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        while True:
            with lock:
                item = next(pending, None)
            if item is None:
                break
            body, auth = item
            try:
                conn.request(
                    "POST",
                    REPORT_PATH,
                    body=body,
                    headers={"Authorization": auth, "Content-Type": "application/json"},
                )
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                conn.close()
                ok = False
            if not ok:
                with lock:
                    errors += 1
        conn.close()

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return errors


def _client_process(url: str, batch, threads: int, start, results) -> None:
    start.wait()
    results.put(_send_all(url, batch, threads))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--users-per-node", type=int, default=5)
    parser.add_argument("--reports", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=2, help="client processes")
    parser.add_argument("--threads", type=int, default=4, help="connections per process")
    args = parser.parse_args()

    django.setup()
    from django.db import connections
    from nacl.public import PrivateKey
    from nacl.signing import SigningKey

    from loginserver.models import Node
    from peers import protocol

    nodes = []
    for i in range(args.nodes):
        key = SigningKey.generate()
        name = f"lsbench-{i}"
        Node.objects.update_or_create(
            name=name,
            defaults={"url": f"http://127.0.0.1:9/{name}", "sign_key": bytes(key.verify_key),
                      "active": True},
        )  # fmt: skip
        users = [
            {"username": f"{name}-u{j}", "sign_key": protocol.b64e(bytes(SigningKey.generate()
             .verify_key)), "box_key": protocol.b64e(bytes(PrivateKey.generate().public_key)),
             "full_name": f"User {j}", "position": "Director"}
            for j in range(args.users_per_node)
        ]  # fmt: skip
        nodes.append((name, key, users))
    connections.close_all()  # the client processes below must not share this connection

    def signed_report(name, key, users, step: int) -> tuple[bytes, str]:
        """A node's report (presence moves every round) and its Authorization header."""
        statuses = ("online", "away", "offline")
        body = protocol.canonical_json(
            {"users": [dict(u, status=statuses[(step + k) % 3], last_seen=int(time.time()))
                       for k, u in enumerate(users)]}
        )  # fmt: skip
        auth = protocol.sign_request(key, node=name, method="POST", path=REPORT_PATH, body=body)
        return body, auth

    # First round signs every user record; the figure is the steady state after it.
    warm = [signed_report(name, key, users, 0) for name, key, users in nodes]
    if _send_all(args.url, warm, args.threads):
        raise SystemExit("the warm-up round was refused")

    prepared = [
        signed_report(*nodes[i % len(nodes)], 1 + i // len(nodes)) for i in range(args.reports)
    ]
    # Interleaved, so every process sends every round and the rounds stay in order.
    batches = [prepared[p :: args.processes] for p in range(args.processes)]
    mp = multiprocessing.get_context("fork")
    start, results = mp.Event(), mp.Queue()
    clients = [
        mp.Process(target=_client_process, args=(args.url, batch, args.threads, start, results))
        for batch in batches
    ]
    for c in clients:
        c.start()
    time.sleep(0.2)  # let every client process reach the start line
    t0 = time.perf_counter()
    start.set()
    errors = sum(results.get() for _ in clients)
    elapsed = time.perf_counter() - t0
    for c in clients:
        c.join()

    # The unchanged directory: a signed GET with If-None-Match answered 304.
    name, key, _ = nodes[0]
    session = requests.Session()

    def get_directory(etag: str | None) -> requests.Response:
        auth = protocol.sign_request(key, node=name, method="GET", path="/api/v1/directory",
                                     body=b"")  # fmt: skip
        headers = {"Authorization": auth}
        if etag:
            headers["If-None-Match"] = etag
        return session.get(args.url + "/api/v1/directory", headers=headers, timeout=30)

    first = get_directory(None)
    first.raise_for_status()
    etag = first.headers["ETag"]
    times = []
    view_times = []  # the view's own time, from its Server-Timing header
    for _ in range(200):
        t = time.perf_counter()
        r = get_directory(etag)
        times.append((time.perf_counter() - t) * 1000)
        timing = r.headers.get("Server-Timing", "")
        if timing.startswith("view;dur="):
            view_times.append(float(timing.removeprefix("view;dur=")))
        if r.status_code != 304:
            etag = r.headers.get("ETag", etag)  # a late report changed it; keep measuring
    print(
        json.dumps(
            {
                "reports_per_s": round((args.reports - errors) / elapsed, 1),
                "etag_304_p50_ms": round(statistics.median(times), 3),
                "parameters": {
                    "nodes": args.nodes,
                    "users_per_node": args.users_per_node,
                    "reports": args.reports,
                    "errors": errors,
                    "client_processes": args.processes,
                    "client_threads": args.processes * args.threads,
                    "etag_304_view_p50_ms": (
                        round(statistics.median(view_times), 3) if view_times else None
                    ),
                },
            }
        )
    )


if __name__ == "__main__":
    main()
