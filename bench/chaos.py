"""Chaos run: messages between three offices while processes die and the network misbehaves.

    .venv/bin/python -m bench.chaos [--quick] [--seed 7] [--messages N] [--out FILE]

Starts a login server and three office nodes ("hq", "branch", "lab") with the production
processes on loopback, supervised as the demo supervises them, and a fault-injecting
proxy in front of lab that delays, drops or cuts a fraction of the peer requests. People
on all three offices send messages through the compose form while a fault script on a
fixed seed repeatedly kills a node's web process, SIGKILLs a worker mid-delivery,
restarts Redis, flushes Redis and stops the login server for a while. Then it waits for
quiet and counts, from every node's database: sent, delivered, duplicates, lost and
wrong content, time to delivery (p50/p99/max), the longest stall of any queue, and how
long a queue took to move again after its worker was killed. It prints them, writes
JSON (default bench/results/chaos.json) and exits 1 unless lost = duplicates = wrong =
0. Every loop is bounded in count and time. --quick is the version the test suite runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import redis
import requests

from bench.faultproxy import FaultProxy
from p2psocial.devnet import (
    BASE_DIR,
    DevnetError,
    Network,
    Supervisor,
    csrf_token,
    free_port,
    login,
    wait_until,
)

PASSWORD = "chaos-password-Xq9!"
NODES = ("hq", "branch", "lab")
PROXIED = "lab"
PEOPLE_PER_NODE = 2
CHAOS_SETTINGS = {
    "P2P_LOG_LEVEL": "WARNING",
    "P2P_PRESENCE_REPORT_INTERVAL_S": "2",
    "P2P_DIRECTORY_FETCH_INTERVAL_S": "2",
    "P2P_OUTBOX_SWEEP_INTERVAL_S": "1",
    "P2P_HEARTBEAT_INTERVAL_S": "2",
    "P2P_NODE_OFFLINE_AFTER_S": "20",
    "P2P_DELIVERY_BACKOFF_BASE_S": "0.5",
    "P2P_DELIVERY_BACKOFF_MAX_S": "3",
    "P2P_PEER_REQUEST_DEADLINE_S": "10",
}


@dataclass(frozen=True)
class Plan:
    # posts: a few die with a killed web process before anything is stored, so the full
    # run posts a little over the 2,000 messages it must get across
    messages: int
    rate_per_s: float  # messages are spread over the run so that faults land among them
    senders: int  # threads posting the compose form
    fault_every_s: float
    login_server_down_s: float
    quiet_timeout_s: float
    run_timeout_s: float  # the whole sending phase, faults included


FULL = Plan(messages=2100, rate_per_s=10, senders=3, fault_every_s=8,
            login_server_down_s=60, quiet_timeout_s=600, run_timeout_s=900)  # fmt: skip
QUICK = Plan(messages=300, rate_per_s=8, senders=2, fault_every_s=4,
             login_server_down_s=6, quiet_timeout_s=150, run_timeout_s=180)  # fmt: skip
FAULTS = ("kill_worker", "restart_redis", "kill_web", "flush_redis", "stop_login_server")


def reader(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=20, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=20000")
    return conn


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def stamp(value: str) -> float:
    """A Django SQLite datetime column as a Unix time."""
    return datetime.fromisoformat(value).replace(tzinfo=timezone.utc).timestamp()


@dataclass
class Log:
    lines: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def __call__(self, line: str) -> None:
        text = f"[{time.monotonic() - self.started:6.1f}s] {line.splitlines()[0]}"
        self.lines.append(text)
        print(text, flush=True)


class Chaos:
    def __init__(self, root: Path, plan: Plan, *, seed: int):
        self.root = root
        self.plan = plan
        self.seed = seed
        self.random = random.Random(seed)
        self.log = Log()
        self.proxy_port = free_port()
        self.net = Network(root, nodes=NODES, settings=CHAOS_SETTINGS,
                           public_ports={PROXIED: self.proxy_port})  # fmt: skip
        self.proxy: FaultProxy | None = None
        self.stop = threading.Event()
        self.sending_done = threading.Event()
        self.sessions: dict[str, tuple[str, requests.Session, str]] = {}
        self.post_results: Counter[str] = Counter()
        self.worker_kills: list[tuple[str, float]] = []  # (node, monotonic time)
        self.samples: dict[str, list[tuple[float, int, int]]] = {n: [] for n in NODES}
        self.fault_counts: Counter[str] = Counter()

    # --- set-up ----------------------------------------------------------------------------
    def people(self) -> list[tuple[str, str]]:
        return [(node, f"{node}{i}") for node in NODES for i in range(1, PEOPLE_PER_NODE + 1)]

    def start(self) -> None:
        self.net.start()
        self.proxy = FaultProxy(
            self.proxy_port, self.net.node(PROXIED).port, seed=self.seed,
            delay=0.05, drop=0.03, cut=0.03,
        )  # fmt: skip
        self.proxy.start()
        secrets_by_user = {
            user: self.net.create_person(node, user, PASSWORD) for node, user in self.people()
        }
        self.net.wait_ready(timeout=120)
        for node, user in self.people():
            base = self.net.node(node).direct_url
            session = login(base, user, PASSWORD, self.net.totp_code(secrets_by_user[user]))
            page = session.get(f"{base}/users/", timeout=10)
            self.sessions[user] = (base, session, csrf_token(page.text))

    # --- the three loops ----------------------------------------------------------------------
    def send_all(self) -> None:
        people = self.people()
        plan = []
        for seq in range(self.plan.messages):
            node, sender = people[seq % len(people)]
            others = [p for p in people if p[0] != node]
            plan.append((seq, sender, others[(seq // len(people)) % len(others)][1]))
        chunks = [plan[i :: self.plan.senders] for i in range(self.plan.senders)]
        threads = [threading.Thread(target=self._send, args=(c,)) for c in chunks]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.sending_done.set()

    def _send(self, items: list[tuple[int, str, str]]) -> None:
        started = time.monotonic()
        deadline = started + self.plan.run_timeout_s
        for seq, sender, recipient in items:
            due = started + seq / self.plan.rate_per_s
            if due > time.monotonic():
                self.stop.wait(due - time.monotonic())
            if time.monotonic() > deadline or self.stop.is_set():
                self.post_results["not_tried"] += 1
                continue
            base, session, token = self.sessions[sender]
            try:
                answer = session.post(
                    f"{base}/chat/{recipient}/",
                    data={"csrfmiddlewaretoken": token, "text": f"chaos {seq} from {sender}"},
                    allow_redirects=False,
                    timeout=15,
                )
                self.post_results[f"http_{answer.status_code}"] += 1
            except requests.RequestException:
                # The web process died under the request: it may or may not have stored
                # it; the databases say which. Wait for it to come back, bounded.
                self.post_results["no_answer"] += 1
                self.stop.wait(1.0)

    def supervise(self) -> None:
        supervisor = Supervisor(self.net, self.log)
        while not self.stop.wait(0.5):
            supervisor.check()

    def sample(self) -> None:
        """Every 0.5 s: each node's waiting outbox rows and delivered messages."""
        readers = {n: reader(self.net.node(n).data_dir / "db.sqlite3") for n in NODES}
        while not self.stop.wait(0.5):
            now = time.monotonic()
            for node, conn in readers.items():
                try:
                    waiting = conn.execute("SELECT COUNT(*) FROM messaging_outbox").fetchone()[0]
                    done = conn.execute(
                        "SELECT COUNT(*) FROM messaging_message WHERE direction='out' "
                        "AND status IN ('delivered','read')"
                    ).fetchone()[0]
                except sqlite3.Error:
                    continue
                self.samples[node].append((now, waiting, done))

    def faults(self) -> None:
        order = list(FAULTS)
        index = 0
        while not self.sending_done.is_set() and not self.stop.is_set():
            if self.stop.wait(self.plan.fault_every_s) or self.sending_done.is_set():
                break
            if index % len(order) == 0:
                self.random.shuffle(order)
            fault = order[index % len(order)]
            index += 1
            node = self.random.choice(NODES)
            self.fault_counts[fault] += 1
            getattr(self, f"_{fault}")(node)

    def _kill(self, proc) -> None:
        if proc is not None and proc.alive and proc.pid:
            os.killpg(proc.pid, signal.SIGKILL)

    def _kill_worker(self, node: str) -> None:
        self.log(f"fault: SIGKILL {node}'s worker")
        self.worker_kills.append((node, time.monotonic()))
        self._kill(self.net.node(node).processes.get("worker"))

    def _kill_web(self, node: str) -> None:
        self.log(f"fault: SIGKILL {node}'s web process")
        self._kill(self.net.node(node).processes.get("web"))

    def _restart_redis(self, node: str) -> None:
        self.log("fault: SIGKILL Redis (the supervisor starts it again, empty)")
        self._kill(self.net.redis)

    def _flush_redis(self, node: str) -> None:
        self.log("fault: FLUSHDB every server's Redis database")
        try:
            self.net.flush_redis()
        except redis.RedisError as exc:  # Redis may be down from the last fault
            self.log(f"  flush failed: {type(exc).__name__}")

    def _stop_login_server(self, node: str) -> None:
        self.log(f"fault: login server stopped for {self.plan.login_server_down_s:.0f} s")
        assert self.net.login_server is not None
        self.net.login_server.stop_web()
        self.stop.wait(self.plan.login_server_down_s)
        self.net.login_server.start_web(wait=False)
        self.log("login server started again")

    # --- the run ------------------------------------------------------------------------------
    def run(self) -> dict:
        started = time.monotonic()
        loops = [
            threading.Thread(target=self.supervise, daemon=True),
            threading.Thread(target=self.sample, daemon=True),
            threading.Thread(target=self.faults, daemon=True),
        ]
        for loop in loops:
            loop.start()
        self.send_all()
        self.log(f"sending done: {dict(self.post_results)}")
        loops[2].join(timeout=self.plan.login_server_down_s + 30)
        quiet = self.wait_quiet()
        self.stop.set()
        for loop in loops:
            loop.join(timeout=10)
        figures = self.count()
        figures.update(
            seed=self.seed,
            plan=self.plan.__dict__,
            quiet=quiet,
            faults=dict(self.fault_counts),
            posts=dict(self.post_results),
            proxy=dict(self.proxy.counts) if self.proxy else {},
            restarts={p.name: p.restarts for p in self.net.processes() if p.restarts},
            duration_s=round(time.monotonic() - started, 1),
        )
        return figures

    def wait_quiet(self) -> bool:
        """Every outbox empty on every node (everything acknowledged), bounded."""
        self.log("waiting for quiet: every outbox empty")
        readers = [reader(self.net.node(n).data_dir / "db.sqlite3") for n in NODES]

        def empty() -> bool:
            try:
                return all(
                    c.execute("SELECT COUNT(*) FROM messaging_outbox").fetchone()[0] == 0
                    for c in readers
                )
            except sqlite3.Error:
                return False

        try:
            wait_until(empty, timeout=self.plan.quiet_timeout_s, message="quiet", interval=1)
        except DevnetError:
            self.log("not quiet before the deadline")
            return False
        return True

    def count(self) -> dict:
        sent: dict[str, tuple[str, str, int, str]] = {}  # envelope id -> (text, to, created, st)
        sent_texts: Counter[str] = Counter()
        received: dict[str, list[tuple[str, float]]] = {}
        for node in NODES:
            conn = reader(self.net.node(node).data_dir / "db.sqlite3")
            for envelope, text, to, created, status in conn.execute(
                "SELECT envelope_id, text, recipient_username, created_ms, status "
                "FROM messaging_message WHERE direction='out' AND text LIKE 'chaos %'"
            ):
                sent[envelope] = (text, to, created, status)
                sent_texts[text] += 1
            for envelope, text, stored in conn.execute(
                "SELECT envelope_id, text, stored_at FROM messaging_message "
                "WHERE direction='in' AND text LIKE 'chaos %'"
            ):
                received.setdefault(envelope, []).append((text, stamp(stored)))
        lost = [e for e in sent if e not in received]
        duplicates = sum(len(rows) - 1 for rows in received.values()) + sum(
            n - 1 for n in sent_texts.values()
        )
        wrong = [
            e
            for e, rows in received.items()
            if e not in sent or any(text != sent[e][0] for text, _ in rows)
        ]
        delays = [rows[0][1] - sent[e][2] / 1000 for e, rows in received.items() if e in sent]
        delivered = sum(1 for v in sent.values() if v[3] in ("delivered", "read"))
        return {
            "sent": len(sent),
            "delivered": delivered,
            "received": len(received),
            "lost": len(lost),
            "duplicates": duplicates,
            "wrong": len(wrong),
            "delivery_p50_s": _round(pct(delays, 50)),
            "delivery_p99_s": _round(pct(delays, 99)),
            "delivery_max_s": _round(max(delays) if delays else None),
            "longest_stall_s": _round(self.longest_stall()),
            "worker_kill_recovery_s": [_round(r) for r in self.recoveries()],
        }

    def longest_stall(self) -> float:
        """The longest time any node had envelopes waiting and delivered nothing."""
        longest = 0.0
        for samples in self.samples.values():
            since = None
            last_done = None
            for at, waiting, done in samples:
                if waiting and (since is None or done != last_done):
                    since = at if done != last_done or since is None else since
                if not waiting:
                    since = None
                elif since is not None:
                    longest = max(longest, at - since)
                last_done = done
        return longest

    def recoveries(self) -> list[float]:
        """After each worker kill with envelopes waiting: time until that node delivered."""
        result = []
        for node, killed_at in self.worker_kills:
            after = [(at, w, d) for at, w, d in self.samples[node] if at >= killed_at]
            if not after or not after[0][1]:
                continue  # nothing was waiting: nothing to recover
            first_done = after[0][2]
            moved = next((at for at, _, d in after if d > first_done), None)
            if moved is not None:
                result.append(moved - killed_at)
        return result

    def close(self) -> None:
        self.stop.set()
        if self.proxy:
            self.proxy.stop()
        self.net.stop()


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def passed(figures: dict) -> bool:
    return figures["lost"] == figures["duplicates"] == figures["wrong"] == 0


def run(plan: Plan, *, seed: int, root: Path) -> dict:
    chaos = Chaos(root, plan, seed=seed)
    try:
        chaos.start()
        return chaos.run()
    finally:
        chaos.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the test suite's smaller run")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--messages", type=int, help="override the number of messages")
    parser.add_argument("--out", type=Path, default=BASE_DIR / "bench" / "results" / "chaos.json")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.messages:
        plan = Plan(**{**plan.__dict__, "messages": args.messages})
    root = Path(tempfile.mkdtemp(prefix="p2psocial-chaos-"))
    figures = run(plan, seed=args.seed, root=root)
    ok = passed(figures) and figures["quiet"]
    if ok:
        shutil.rmtree(root)
    print("\nchaos run")
    for key in ("sent", "delivered", "received", "duplicates", "lost", "wrong",
                "delivery_p50_s", "delivery_p99_s", "delivery_max_s", "longest_stall_s",
                "worker_kill_recovery_s", "faults", "restarts", "proxy", "posts", "quiet",
                "duration_s"):  # fmt: skip
        print(f"  {key:<24} {figures[key]}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2))
    print(f"\nwritten to {args.out}")
    if not ok:
        print(f"FAILED: the network's data and logs are kept in {root}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
