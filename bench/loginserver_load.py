"""Login server load: signed presence reports from many nodes, and the 304 directory path.

Run by bench/run.py with the login server's environment (same database): it enrols
the bench nodes directly in that database, then talks to the login server over HTTP
exactly as nodes do. The last line of its output is a JSON object of figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

import django
import requests


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--users-per-node", type=int, default=5)
    parser.add_argument("--reports", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()

    django.setup()
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

    def report(session: requests.Session, name, key, users, step: int) -> None:
        statuses = ("online", "away", "offline")
        body = protocol.canonical_json(
            {"users": [dict(u, status=statuses[(step + k) % 3], last_seen=int(time.time()))
                       for k, u in enumerate(users)]}
        )  # fmt: skip
        auth = protocol.sign_request(key, node=name, method="POST", path="/api/v1/report",
                                     body=body)  # fmt: skip
        r = session.post(
            args.url + "/api/v1/report",
            data=body,
            timeout=30,
            headers={"Authorization": auth, "Content-Type": "application/json"},
        )
        r.raise_for_status()

    # First round signs every user record; the figure is the steady state after it.
    warm = requests.Session()
    for name, key, users in nodes:
        report(warm, name, key, users, 0)

    counter = iter(range(args.reports))
    lock = threading.Lock()
    errors: list[str] = []

    def run() -> None:
        session = requests.Session()
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            name, key, users = nodes[i % len(nodes)]
            try:
                report(session, name, key, users, 1 + i // len(nodes))
            except requests.RequestException as exc:
                errors.append(str(exc))

    threads = [threading.Thread(target=run) for _ in range(args.threads)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0

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
                "reports_per_s": round((args.reports - len(errors)) / elapsed, 1),
                "etag_304_p50_ms": round(statistics.median(times), 3),
                "parameters": {
                    "nodes": args.nodes,
                    "users_per_node": args.users_per_node,
                    "reports": args.reports,
                    "errors": len(errors),
                    "client_threads": args.threads,
                    "etag_304_view_p50_ms": (
                        round(statistics.median(view_times), 3) if view_times else None
                    ),
                },
            }
        )
    )


if __name__ == "__main__":
    main()
