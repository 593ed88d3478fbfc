"""Measure the network: floors, latency, throughput, backlog, pages, login server.

    .venv/bin/python -m bench.run [--quick] [--out bench/results/latest.json]

Starts its own login server and two office nodes ("hq", "branch") with the production
processes (uvicorn, Celery worker and beat, one Redis, SQLite in WAL mode) in a
temporary folder, measures, prints a table and writes JSON (one object per figure:
name, value, unit, parameters, and the ratio to the floor it is compared with).
This process acts as hq's web process: it calls the same service the send view calls.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import requests

from p2psocial.devnet import BASE_DIR, PYTHON, Network, wait_until

PASSWORD = "bench-password-Xq9!"
RESULTS = BASE_DIR / "bench" / "results"
PARTS = ("messages", "pages", "loginserver", "recovery", "files", "live", "search", "groups")
# One uvicorn process per core, as docs/operations.md advises for the login server.
LOGIN_SERVER_WEB_WORKERS = 2
BENCH_SETTINGS = {
    "P2P_LOG_LEVEL": "WARNING",
    "P2P_DIRECTORY_FETCH_INTERVAL_S": "2",
    "P2P_PRESENCE_REPORT_INTERVAL_S": "2",
    "P2P_NODE_OFFLINE_AFTER_S": "8",
    "P2P_OUTBOX_SWEEP_INTERVAL_S": "2",
    # the full run sends one 500 MB file
    "P2P_FILE_MAX_BYTES": str(600 * 1000 * 1000),
}


class Figures:
    def __init__(self) -> None:
        self.rows: list[dict] = []

    def add(
        self,
        name: str,
        value: float | None,
        unit: str,
        floor: str | None = None,
        floor_value: float | None = None,
        target: str = "",
        **parameters,
    ) -> None:
        ratio = None
        if value is not None and floor_value:
            ratio = round(value / floor_value, 1)
        row = {
            "name": name,
            "value": None if value is None else round(value, 3),
            "unit": unit,
            "ratio_to_floor": ratio,
            "floor": floor,
            "target": target,
            "parameters": parameters,
        }
        self.rows.append(row)
        shown = "n/a" if value is None else f"{value:,.2f}"
        ratio_txt = f"x{ratio}" if ratio is not None else ""
        print(f"  {name:<52} {shown:>12} {unit:<8} {ratio_txt:>8}  {target}", flush=True)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def ts(value: str) -> float:
    """A Django SQLite datetime column (UTC) as unix seconds."""
    return datetime.fromisoformat(value).replace(tzinfo=timezone.utc).timestamp()


def reader(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=20, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=20000")
    return conn


# --- floors ----------------------------------------------------------------------------
def floor_celery(n: int) -> list[float]:
    from p2psocial import redis_client
    from p2psocial.celery import app

    r = redis_client.get()
    times = []
    for _ in range(n):
        key = f"bench:echo:{uuid.uuid4().hex}"
        t0 = time.perf_counter()
        app.send_task("p2psocial.tasks.echo", args=[key])
        r.blpop([key], timeout=10)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def floor_http(url: str, n: int) -> list[float]:
    session = requests.Session()
    session.get(url + "/health/live", timeout=5)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        session.get(url + "/health/live", timeout=5).raise_for_status()
        times.append((time.perf_counter() - t0) * 1000)
    return times


def floor_sqlite(folder: Path, n: int) -> list[float]:
    conn = sqlite3.connect(folder / "floor.sqlite3", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v BLOB)")
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (v) VALUES (?)", (os.urandom(200),))
        conn.execute("COMMIT")
        times.append((time.perf_counter() - t0) * 1000)
    return times


# --- message path ----------------------------------------------------------------------
class MessagePath:
    """hq's service layer in this process, branch's database read-only."""

    def __init__(self, net: Network):
        self.net = net
        self.hq_db = reader(net.node("hq").data_dir / "db.sqlite3")
        self.branch_db = reader(net.node("branch").data_dir / "db.sqlite3")

    def send(self, sender, recipient: str, text: str):
        from messaging.sending import send_message

        return send_message(sender=sender, recipient_username=recipient, text=text)

    def stored_at(self, envelope_id: uuid.UUID) -> float | None:
        row = self.branch_db.execute(
            "SELECT stored_at FROM messaging_message WHERE envelope_id=? AND direction='in'",
            (envelope_id.hex,),
        ).fetchone()
        return ts(row[0]) if row else None

    def delivered_at(self, envelope_id: uuid.UUID) -> float | None:
        row = self.hq_db.execute(
            "SELECT delivered_at FROM messaging_message WHERE envelope_id=? AND direction='out'",
            (envelope_id.hex,),
        ).fetchone()
        return ts(row[0]) if row and row[0] else None

    def delivered_count(self, ids: list[str]) -> int:
        total = 0
        for i in range(0, len(ids), 900):
            chunk = ids[i : i + 900]
            marks = ",".join("?" * len(chunk))
            total += self.hq_db.execute(
                f"SELECT COUNT(*) FROM messaging_message WHERE direction='out' "
                f"AND delivered_at IS NOT NULL AND envelope_id IN ({marks})",
                chunk,
            ).fetchone()[0]
        return total

    def received_count(self, ids: list[str]) -> tuple[int, int]:
        """(distinct envelopes stored on branch, rows stored on branch) for these ids."""
        distinct = rows = 0
        for i in range(0, len(ids), 900):
            chunk = ids[i : i + 900]
            marks = ",".join("?" * len(chunk))
            d, n = self.branch_db.execute(
                f"SELECT COUNT(DISTINCT envelope_id), COUNT(*) FROM messaging_message "
                f"WHERE direction='in' AND envelope_id IN ({marks})",
                chunk,
            ).fetchone()
            distinct += d
            rows += n
        return distinct, rows


def measure_latency(path: MessagePath, sender, n: int) -> tuple[list[float], list[float]]:
    stored, delivered = [], []
    for i in range(n):
        t0 = time.time()
        message = path.send(sender, "rcv1", f"latency probe {i} ✓ 👩‍💻")
        t_stored = wait_until(
            lambda m=message: path.stored_at(m.envelope_id),
            timeout=30,
            message="message stored on branch",
            interval=0.0005,
        )
        t_delivered = wait_until(
            lambda m=message: path.delivered_at(m.envelope_id),
            timeout=30,
            message="delivered on hq",
            interval=0.0005,
        )
        stored.append((t_stored - t0) * 1000)
        delivered.append((t_delivered - t0) * 1000)
    return stored, delivered


def send_many(path: MessagePath, senders: list, n: int, threads: int) -> list[str]:
    ids: list[str] = []
    lock = threading.Lock()
    per = n // threads

    def run(index: int) -> None:
        from django.db import connection

        sender = senders[index % len(senders)]
        mine = []
        try:
            for i in range(per):
                message = path.send(sender, f"rcv{1 + index % 4}", f"bulk {index}/{i}")
                mine.append(message.envelope_id.hex)
        finally:
            connection.close()
        with lock:
            ids.extend(mine)

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return ids


def wait_delivered(path: MessagePath, ids: list[str], timeout: float) -> float:
    wait_until(
        lambda: path.delivered_count(ids) == len(ids),
        timeout=timeout,
        message=f"{len(ids)} messages delivered",
        interval=0.05,
    )
    return time.time()


def worker_kill_recovery(net: Network, path: MessagePath, sender) -> float:
    """Seconds from SIGKILLing hq's worker in the middle of a delivery to branch until hq
    has that message acknowledged. A supervisor starts the worker again at once; the
    queue waits for the dead worker's delivery lock to expire and the next outbox sweep."""
    import signal

    from django.conf import settings

    from p2psocial import redis_client

    hq, branch = net.node("hq"), net.node("branch")
    lock = f"p2p:messaging:deliver-lock:{settings.CELERY_TASK_DEFAULT_QUEUE}:branch"
    web = branch.processes["web"].popen
    web.send_signal(signal.SIGSTOP)  # branch accepts the request but does not answer
    try:
        message = path.send(sender, "rcv1", f"in flight when the worker dies {uuid.uuid4()}")
        wait_until(
            lambda: redis_client.get().exists(lock),
            timeout=30,
            message="hq's worker delivering to branch",
            interval=0.005,
        )
        hq.stop_worker(kill=True)
        killed = time.time()
    finally:
        web.send_signal(signal.SIGCONT)
    hq.start_worker(wait=False)
    delivered = wait_until(
        lambda: path.delivered_at(message.envelope_id),
        timeout=120,
        message="the message in flight delivered after the worker was killed",
        interval=0.05,
    )
    hq.wait_worker()
    return delivered - killed


# --- pages ---------------------------------------------------------------------------
def page_times(session: requests.Session, url: str, n: int) -> list[float]:
    session.get(url, timeout=30).raise_for_status()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        response = session.get(url, timeout=30)
        times.append((time.perf_counter() - t0) * 1000)
        response.raise_for_status()
    return times


def seed_conversation(owner, peer: str, count: int) -> None:
    from messaging.models import Message

    now_ms = int(time.time() * 1000)
    rows = [
        Message(
            envelope_id=uuid.uuid4(),
            kind="message",
            owner=owner,
            peer_username=peer,
            sender_username=owner.username if i % 2 else peer,
            recipient_username=peer if i % 2 else owner.username,
            direction="out" if i % 2 else "in",
            text=f"history {i} — ünïcödé 🎉",
            created_ms=now_ms - (count - i) * 1000,
            status="read",
            read_at=datetime.now(timezone.utc),
        )
        for i in range(count)
    ]
    Message.objects.bulk_create(rows, batch_size=1000)


def seed_directory(nodes: int, people: int) -> None:
    from peers.models import DirectoryUser, PeerNode

    statuses = ["online", "away", "offline"]
    peer_nodes = [
        PeerNode.objects.create(
            name=f"bench-{i}",
            url=f"http://127.0.0.1:9/{i}",
            sign_key=os.urandom(32),
            active=True,
            online=i % 3 != 0,
        )
        for i in range(nodes)
    ]
    DirectoryUser.objects.bulk_create(
        [
            DirectoryUser(
                username=f"person{i}",
                node=peer_nodes[i % nodes],
                sign_key=os.urandom(32),
                box_key=os.urandom(32),
                full_name=f"Person {i} Ωμέγα",
                position="Director",
                record=b"{}",
                record_sig=os.urandom(64),
                status=statuses[i % 3],
                last_seen=datetime.now(timezone.utc),
            )
            for i in range(people)
        ],
        batch_size=500,
    )


def run_loginserver_load(net: Network, *, nodes: int, reports: int) -> dict:
    result = subprocess.run(
        [
            PYTHON,
            "-m",
            "bench.loginserver_load",
            "--url",
            net.login_server.url,
            "--nodes",
            str(nodes),
            "--reports",
            str(reports),
        ],
        env=net.login_server.env,
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        raise RuntimeError(f"login server load failed:\n{result.stdout}\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- search ----------------------------------------------------------------------------
def report_search(figures: Figures, search: dict, f_http: float) -> None:
    """Figures of bench.search: per kind of query the page's p50 over HTTP (p99 and the
    in-process times in its parameters), overall p50/p99 both ways, the index's size."""
    kinds = search["kinds"]
    seeding = search["seeding"]
    print(
        f"  ({seeding['messages']:,} messages on hq, half of them the searcher's over 50 "
        f"conversations; HTTP = GET /search/?q=..&rows=1 on loopback, keep-alive; "
        f"in process = search_messages() on the same file, DEBUG={search['debug']})"
    )
    figures.add(
        "search: seeding (generated, ORM, FTS triggers)",
        seeding["messages"] / seeding["seconds"],
        "msg/s",
        messages=seeding["messages"],
        files=seeding["files"],
        seconds=round(seeding["seconds"], 1),
    )
    for kind in kinds:
        figures.add(
            f"search: {kind.label}, HTTP p50",
            pct(kind.http_ms, 50),
            "ms",
            "http floor",
            f_http,
            target="p50<=50",
            q=kind.q,
            with_username=kind.with_username,
            before=kind.before,
            matches=kind.matches,
            matches_node=kind.matches_node,
            p99_ms=round(pct(kind.http_ms, 99), 3),
            in_process_p50_ms=round(pct(kind.call_ms, 50), 3),
            in_process_p99_ms=round(pct(kind.call_ms, 99), 3),
            n=len(kind.http_ms),
            plan=kind.plan,
        )
    every_http = [t for kind in kinds for t in kind.http_ms]
    every_call = [t for kind in kinds for t in kind.call_ms]
    for label, values, floor, floor_value in (
        ("HTTP", every_http, "http floor", f_http),
        ("search_messages() in process", every_call, None, None),
    ):
        for p in (50, 99):
            figures.add(
                f"search: all kinds, {label} p{p}",
                pct(values, p),
                "ms",
                floor,
                floor_value,
                target="p50<=50",
                n=len(values),
                rounds=search["rounds"],
            )
    print(f"\n  {'query kind':<36} {'matches':>8} {'HTTP p50':>9} {'p99':>7} "
          f"{'call p50':>9} {'p99':>7}")  # fmt: skip
    for kind in kinds:
        print(
            f"  {kind.label:<36} {kind.matches:>8,} {pct(kind.http_ms, 50):>9.2f} "
            f"{pct(kind.http_ms, 99):>7.2f} {pct(kind.call_ms, 50):>9.2f} "
            f"{pct(kind.call_ms, 99):>7.2f}"
        )
    missed = [kind for kind in kinds if pct(kind.http_ms, 50) > 50]
    for kind in missed:
        print(f"  p50 over 50 ms: {kind.label} (q={kind.q!r}); its plan:")
        for line in kind.plan:
            print(f"    {line}")
    print()
    for label, size in (("as the triggers built it", search["size"]),
                        ("after FTS5 'optimize'", search["size_optimized"])):  # fmt: skip
        per = size["indexed"] or 1
        figures.add(
            f"search index per message, {label}",
            size["fts_bytes"] / per,
            "B/msg",
            messages=size["indexed"],
            index_bytes_per_message=round(size["index_bytes"] / per, 1),
            content_copy_bytes_per_message=round(size["content_bytes"] / per, 1),
            tables=size["fts_tables"],
            page_size=size["page_size"],
        )
    size = search["size"]
    per = size["messages"] or 1
    figures.add(
        "  of which the inverted index (_data, _idx)",
        size["index_bytes"] / (size["indexed"] or 1),
        "B/msg",
    )
    figures.add(
        "  of which its copy of the text (_content, _docsize)",
        size["content_bytes"] / (size["indexed"] or 1),
        "B/msg",
    )
    figures.add(
        "message table per message (for comparison)",
        size["message_table_bytes"] / per,
        "B/msg",
        messages=size["messages"],
        with_its_indexes_bytes_per_message=round(
            (size["message_table_bytes"] + size["message_indexes_bytes"]) / per, 1
        ),
        text_bytes_per_message=round(search["text_bytes_per_message"], 1),
    )
    figures.add("search index: FTS5 'optimize' took", search["optimize_s"], "s")
    spent = ", ".join(f"{name} {seconds} s" for name, seconds in search["phases_s"].items())
    print(f"  (time spent: {spent})")


# --- main ------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts, under 2 minutes")
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    parser.add_argument("--keep", action="store_true", help="keep the temporary network folder")
    parser.add_argument(
        "--only",
        action="append",
        choices=PARTS,
        help="measure only these parts (floors always); repeatable",
    )
    args = parser.parse_args(argv)
    parts = set(args.only or PARTS)
    q = args.quick
    n_floor = 200 if q else 1000
    n_latency = 100 if q else 500
    n_throughput = 2000 if q else 10000
    n_backlog = 2000 if q else 10000
    n_history = 10000
    n_pages = 30 if q else 100

    figures = Figures()
    problems: list[str] = []  # what must be zero and was not
    started = time.time()
    root = Path(tempfile.mkdtemp(prefix="p2psocial-bench-"))
    print(f"bench: network in {root}", flush=True)
    with Network(
        root,
        nodes=("hq", "branch"),
        settings=BENCH_SETTINGS,
        login_server_web_workers=LOGIN_SERVER_WEB_WORKERS,
    ) as net:
        hq, branch = net.node("hq"), net.node("branch")
        secrets_by_user = {}
        for i in range(1, 5):
            secrets_by_user[f"snd{i}"] = net.create_person("hq", f"snd{i}", PASSWORD)
            net.create_person("branch", f"rcv{i}", PASSWORD)

        # This process becomes hq's web process: same settings, same database, same broker.
        os.environ.update(hq.env)
        import django

        django.setup()
        from accounts.models import User
        from peers.models import DirectoryUser

        wait_until(
            lambda: DirectoryUser.objects.filter(username="rcv4").exists(),
            timeout=60,
            message="hq's directory lists branch's people",
        )
        senders = list(User.objects.filter(username__startswith="snd").order_by("username"))

        print("\nfloors (same machine, same run)")
        f_celery = statistics.median(floor_celery(n_floor))
        f_http = statistics.median(floor_http(branch.url, n_floor))
        f_sqlite = statistics.median(floor_sqlite(root, n_floor))
        figures.add("floor: empty Celery task round trip p50", f_celery, "ms", n=n_floor)
        figures.add("floor: keep-alive HTTP to an empty view p50", f_http, "ms", n=n_floor)
        figures.add("floor: one SQLite WAL commit p50", f_sqlite, "ms", n=n_floor)
        floor_path = f_celery + f_http + f_sqlite

        if "messages" in parts:
            print("\nmessage path")
            path = MessagePath(net)
            path.send(senders[0], "rcv1", "warm-up")
            stored, delivered = measure_latency(path, senders[0], n_latency)
            for label, values, target in (
                ("send -> stored on recipient node", stored, "p50<=15 p99<=50"),
                ("send -> sender sees delivered", delivered, "p50<=20 p99<=60"),
            ):
                for p in (50, 99):
                    figures.add(
                        f"{label} p{p}",
                        pct(values, p),
                        "ms",
                        "celery+http+sqlite",
                        floor_path,
                        target=target,
                        n=n_latency,
                    )

            t0 = time.time()
            ids = send_many(path, senders, n_throughput, threads=4)
            t_sent = time.time()
            t_done = wait_delivered(path, ids, timeout=600)
            distinct, rows = path.received_count(ids)
            figures.add(
                "throughput hq -> branch, acknowledged",
                len(ids) / (t_done - t0),
                "msg/s",
                target=">=1000",
                n=len(ids),
                send_phase_s=round(t_sent - t0, 2),
            )
            figures.add("throughput: lost", len(ids) - distinct, "messages", target="0")
            figures.add("throughput: duplicated", rows - distinct, "messages", target="0")

            # Backlog: branch is down (all its processes), messages queue on hq.
            branch.stop()
            wait_until(
                lambda: (
                    not DirectoryUser.objects.filter(username="rcv1", node__online=True).exists()
                ),
                timeout=120,
                message="hq sees branch offline",
            )
            ids = send_many(path, senders, n_backlog, threads=4)
            branch.start_web()
            t_up = time.time()
            branch.start_worker()
            branch.start_beat()
            t_done = wait_delivered(path, ids, timeout=600)
            distinct, rows = path.received_count(ids)
            figures.add(
                "backlog drain after branch is back",
                t_done - t_up,
                "s",
                target="<=20",
                n=len(ids),
                lost=len(ids) - distinct,
                duplicated=rows - distinct,
            )
            # Delivery alone, without the sender in the way: the queue drains at least this
            # fast (the time also covers branch's restart reaching hq through the directory).
            figures.add(
                "backlog drain rate (delivery alone, conservative)",
                len(ids) / (t_done - t_up),
                "msg/s",
                target=">=1000",
                n=len(ids),
            )

        if "recovery" in parts:
            print("\nrecovery")
            path = MessagePath(net)
            rounds = 3 if q else 5
            recoveries = [worker_kill_recovery(net, path, senders[2]) for _ in range(rounds)]
            figures.add(
                "queue moves again after a worker SIGKILLed mid-delivery (max)",
                max(recoveries),
                "s",
                target="<=10",
                n=rounds,
                median_s=round(statistics.median(recoveries), 2),
                outbox_sweep_interval_s=float(BENCH_SETTINGS["P2P_OUTBOX_SWEEP_INTERVAL_S"]),
            )

        if "pages" in parts:
            print("\npages")
            owner = senders[1]
            seed_conversation(owner, "rcv2", n_history)
            session = net.login("hq", owner.username, PASSWORD, secrets_by_user[owner.username])
            times = page_times(session, f"{hq.url}/chat/rcv2/", n_pages)
            figures.add(
                "conversation page, 10,000 messages of history p50",
                pct(times, 50),
                "ms",
                "http floor",
                f_http,
                target="<=50",
                n=n_pages,
            )
            hq.stop_beat()  # keep the seeded directory while the users page is measured
            seed_directory(nodes=20, people=1000)
            times = page_times(session, f"{hq.url}/users/", n_pages)
            figures.add(
                "users page, 1,000 people across 20 nodes p50",
                pct(times, 50),
                "ms",
                "http floor",
                f_http,
                target="<=50",
                n=n_pages,
            )

        if "loginserver" in parts:
            print("\nlogin server")
            load = run_loginserver_load(net, nodes=100, reports=1000 if q else 5000)
            figures.add(
                "login server: signed presence reports (100 nodes)",
                load["reports_per_s"],
                "reports/s",
                target=">=1000",
                **load["parameters"],
                login_server_web_workers=LOGIN_SERVER_WEB_WORKERS,
            )
            figures.add(
                "login server: unchanged directory answered 304 p50",
                load["etag_304_p50_ms"],
                "ms",
                "http floor",
                f_http,
                target="<=2",
            )

        if "live" in parts:
            print("\nlive events")
            from bench.live import idle_streams, message_to_stream

            path = MessagePath(net)
            rcv_secret = net.create_person("branch", "rcvlive", PASSWORD)
            receiver = net.login("branch", "rcvlive", PASSWORD, rcv_secret)
            wait_until(
                lambda: DirectoryUser.objects.filter(username="rcvlive").exists(),
                timeout=60,
                message="hq's directory lists rcvlive",
            )
            n_events = 100 if q else 500
            latencies = message_to_stream(
                net,
                lambda text: path.send(senders[0], "rcvlive", text),
                receiver,
                n_events,
            )
            for p in (50, 99):
                figures.add(
                    f"send on hq -> event on the recipient's open stream on branch p{p}",
                    pct(latencies, p),
                    "ms",
                    target="p50<=30 p99<=100",
                    n=n_events,
                )
            streams = idle_streams(net, receiver, 200)
            figures.add(
                "200 open event streams, idle: branch's web process CPU",
                streams["idle_core_percent"],
                "% core",
                target="<5",
                sampled_s=10,
            )
            figures.add(
                "a presence change reaches all 200 open streams (max)",
                streams["fan_out_max_ms"],
                "ms",
                target="<=1000",
            )

        if "files" in parts:
            print("\nfiles")
            from bench.files import transfer

            owner = senders[3]
            session = net.login("hq", owner.username, PASSWORD, secrets_by_user[owner.username])
            for size_mb in (50,) if q else (50, 500):
                result = transfer(
                    net, session, recipient="rcv4", size=size_mb * 1_000_000, timeout_s=600
                )
                figures.add(
                    f"one {size_mb} MB file A -> B (upload, pull, verify)",
                    result["mb_per_s"],
                    "MB/s",
                    target=">=50",
                    seconds=round(result["seconds"], 2),
                    upload_s=round(result["upload_s"], 2),
                )
                figures.add(
                    f"one {size_mb} MB file: largest process memory growth",
                    result["max_growth_mb"],
                    "MB",
                    target="<64",
                    per_process_mb=result["growth_mb"],
                )

        if "search" in parts:
            print("\nsearch")
            from bench.search import measure_search

            searcher_secret = net.create_person("hq", "searcher", PASSWORD)
            for i in range(1, 4):
                net.create_person("hq", f"colleague{i}", PASSWORD)
            session = net.login("hq", "searcher", PASSWORD, searcher_secret)
            n_search = 10_000 if q else 100_000
            search = measure_search(
                net,
                session,
                owner=User.objects.get(username="searcher"),
                others=list(User.objects.filter(username__startswith="colleague")),
                messages=n_search,
                rounds=30 if q else 100,
                budget_s=90 if q else 240,
            )
            report_search(figures, search, f_http)

        if "groups" in parts:
            # A network of its own (5 offices): measured by a process that is its hq.
            print("\ngroups")
            from bench.groups import report, run_in_child

            problems += report(figures, run_in_child(quick=q, keep=args.keep))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if q else "full",
        "duration_s": round(time.time() - started, 1),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "figures": figures.rows,
    }
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    print(f"\nwrote {args.out} ({result['duration_s']} s)")
    if not args.keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    if problems:
        print(f"FAILED: {'; '.join(problems)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
