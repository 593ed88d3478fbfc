"""A group of 50 people over 5 offices, on a real network of its own.

    .venv/bin/python -m bench.groups [--quick] [--keep]      # alone: prints its figures
    .venv/bin/python -m bench.run [--quick] --only groups    # within the benchmark

Starts a login server and five office nodes ("hq", "n2" .. "n5") with the production
processes on loopback (bench.run's settings), ten people on each (manage.py
create_person), and waits until every node's directory lists the forty people of the
other four. This process then becomes hq's web process (its settings, database and
broker, as bench.run is for its own hq) and creates the group of all fifty in process
(messaging.groups.create_group, what the new group form calls), and waits until every
node holds the group at its last change with fifty members.

- Latency: one message at a time from a member on hq (send_group_message, what the
  group page's compose box calls); for each, the time from just before the call to the
  latest stored_at of its 49 copies (direction in, its group_message_id) on the five nodes'
  SQLite files, read-only; p50 and p99. Alongside:
  until hq has all 49 delivery rows acknowledged, the call itself, sealing for 49 alone,
  and each node's own arrival.
- Sustained: four people on four different nodes (hq, n2, n3, n4) each send M/4
  messages through their group page's compose form over HTTP (logged in with password
  and TOTP, keep-alive), one thread each, as fast as the 302s come back. Rate = M / (the
  last copy's stored_at - the first send). After a bounded wait every node is counted:
  lost = (message, recipient) copies missing, duplicated = copies beyond one per
  (message, recipient), unexpected = copies for someone who is not a recipient.

Every loop is bounded in count and time; only loopback addresses. Run alone or with
--json (as bench.run runs it, in a process of its own since this process's Django is
another node's), it exits 1 unless lost = duplicated = unexpected = 0.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.run import BENCH_SETTINGS, PASSWORD, Figures, pct, reader, ts
from p2psocial.devnet import BASE_DIR, PYTHON, Network, csrf_token, wait_until

NODES = ("hq", "n2", "n3", "n4", "n5")
PEOPLE_PER_NODE = 10
SENDER_NODES = ("hq", "n2", "n3", "n4")  # one sending thread each in the sustained part
SETTLE_S = 60.0  # the longest wait for the copies after the last send
MESSAGE_TIMEOUT_S = 30.0  # one latency probe
HTTP_TIMEOUT_S = 30.0
CREATE_PEOPLE_THREADS = 3


@dataclass(frozen=True)
class Plan:
    latency: int  # messages one at a time
    sustained: int  # messages from the sending threads, a multiple of their number
    seal: int  # direct sealings timed for the breakdown


FULL = Plan(latency=30, sustained=300, seal=30)
QUICK = Plan(latency=10, sustained=60, seal=10)


def log(line: str) -> None:
    print(f"  groups: {line}", file=sys.stderr, flush=True)


def usernames(node: str) -> list[str]:
    return [f"{node}u{i:02d}" for i in range(PEOPLE_PER_NODE)]


EVERYONE = {u: node for node in NODES for u in usernames(node)}


class Nodes:
    """The five nodes' SQLite files, read-only (as bench.run reads branch's)."""

    def __init__(self, net: Network) -> None:
        self.dbs = {name: reader(net.node(name).data_dir / "db.sqlite3") for name in NODES}

    def one(self, node: str, sql: str, args=()):
        return self.dbs[node].execute(sql, args).fetchone()

    def listed(self, node: str) -> int:
        """How many of the other nodes' people node's directory lists."""
        others = [u for u, home in EVERYONE.items() if home != node]
        marks = ",".join("?" * len(others))
        return self.one(
            node,
            f"SELECT COUNT(*) FROM peers_directoryuser WHERE listed=1 AND username IN ({marks})",
            others,
        )[0]

    def group(self, node: str, group_hex: str) -> tuple[int, str, int] | None:
        """(seq, head, members now) of the group as node knows it, or None."""
        row = self.one(
            node, "SELECT id, seq, head FROM messaging_group WHERE group_id=?", (group_hex,)
        )
        if row is None:
            return None
        members = self.one(
            node,
            "SELECT COUNT(*) FROM messaging_groupmember WHERE group_id=? AND left_seq IS NULL",
            (row[0],),
        )[0]
        return row[1], row[2], members

    def arrivals(self, message_hex: str) -> dict[str, tuple[int, str | None]]:
        """Per node: (copies stored, latest stored_at) of one group message."""
        return {
            node: self.one(
                node,
                "SELECT COUNT(*), MAX(stored_at) FROM messaging_message "
                "WHERE group_message_id=? AND direction='in'",
                (message_hex,),
            )
            for node in NODES
        }

    def acknowledged(self, node: str, message_pk: int) -> tuple[int, int, str | None]:
        """(delivery rows, of them delivered, latest delivered_at) of a sender's message."""
        return self.one(
            node,
            "SELECT COUNT(*), COUNT(delivered_at), MAX(delivered_at) "
            "FROM messaging_groupdelivery WHERE message_id=?",
            (message_pk,),
        )

    def tagged_count(self, tag: str) -> int:
        return sum(
            self.one(
                node,
                "SELECT COUNT(*) FROM messaging_message WHERE direction='in' AND text LIKE ?",
                (tag + "%",),
            )[0]
            for node in NODES
        )

    def tagged_copies(self, tag: str) -> list[tuple[str, str, str, int, str]]:
        """(node, text, recipient, rows, latest stored_at) of the copies of tagged texts."""
        found = []
        for node in NODES:
            found += [
                (node, *row)
                for row in self.dbs[node].execute(
                    "SELECT text, recipient_username, COUNT(*), MAX(stored_at) "
                    "FROM messaging_message WHERE direction='in' AND text LIKE ? "
                    "GROUP BY text, recipient_username",
                    (tag + "%",),
                )
            ]
        return found

    def tagged_sent(self, node: str, tag: str) -> tuple[int, int, int, str | None]:
        """On a sender's node: (out rows, delivery rows, delivered, latest delivered_at)."""
        sent = self.one(
            node,
            "SELECT COUNT(*) FROM messaging_message WHERE direction='out' AND text LIKE ?",
            (tag + "%",),
        )[0]
        rows, delivered, last = self.one(
            node,
            "SELECT COUNT(*), COUNT(d.delivered_at), MAX(d.delivered_at) "
            "FROM messaging_groupdelivery d JOIN messaging_message m ON d.message_id = m.id "
            "WHERE m.direction='out' AND m.text LIKE ?",
            (tag + "%",),
        )
        return sent, rows, delivered, last


def cpu_seconds(net: Network) -> dict[str, float]:
    """User + system CPU seconds so far of every process of the network (children
    included), by name ("n2-worker"), and of this process ("bench (hq's web)")."""
    used: dict[str, float] = {}
    for proc in net.processes():
        if not proc.alive:
            continue
        try:
            root = psutil.Process(proc.pid)
            total = 0.0
            for p in [root, *root.children(recursive=True)]:
                t = p.cpu_times()
                total += t.user + t.system
        except psutil.Error:
            continue
        used[proc.name] = total
    t = psutil.Process().cpu_times()
    used["bench (hq's web)"] = t.user + t.system
    return used


def cpu_spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds spent between two cpu_seconds(), busiest first."""
    spent = {name: after[name] - before.get(name, 0.0) for name in after}
    return {k: round(v, 2) for k, v in sorted(spent.items(), key=lambda kv: -kv[1]) if v >= 0.01}


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (every core, every program)."""
    t = psutil.cpu_times()
    return (
        t.user
        + t.system
        + getattr(t, "nice", 0.0)
        + getattr(t, "irq", 0.0)
        + getattr(t, "softirq", 0.0)
    )


class CpuWatch:
    """CPU spent during a part: by this network's processes, and by the whole machine (so
    that other programs running meanwhile show)."""

    def __init__(self, net: Network) -> None:
        self.net = net
        self.wall = time.monotonic()
        self.machine = machine_busy_s()
        self.processes = cpu_seconds(net)

    def done(self) -> dict:
        spent = cpu_spent(self.processes, cpu_seconds(self.net))
        wall = time.monotonic() - self.wall
        machine = machine_busy_s() - self.machine
        ours = sum(spent.values())
        return {
            "processes": spent,
            "wall_s": round(wall, 2),
            "cores": psutil.cpu_count(),
            "machine_busy_s": round(machine, 2),
            "others_s": round(max(machine - ours, 0.0), 2),
        }


def cpu_by_kind(spent: dict[str, float]) -> dict[str, float]:
    """The same, summed by kind of process over the nodes (web, worker, beat, ...)."""
    kinds: dict[str, float] = {}
    for name, seconds in spent.items():
        kind = name.rsplit("-", 1)[-1] if "-" in name else name
        kinds[kind] = kinds.get(kind, 0.0) + seconds
    return {k: round(v, 2) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])}


# --- setting up ----------------------------------------------------------------------------
def create_people(net: Network) -> dict[str, str]:
    """Ten people per node through the documented command, a few at a time; secrets."""

    def make(username: str) -> tuple[str, str]:
        return username, net.create_person(EVERYONE[username], username, PASSWORD)

    with ThreadPoolExecutor(CREATE_PEOPLE_THREADS) as pool:
        return dict(pool.map(make, list(EVERYONE)))


def wait_directories(nodes: Nodes) -> None:
    want = len(EVERYONE) - PEOPLE_PER_NODE
    wait_until(
        lambda: all(nodes.listed(node) == want for node in NODES),
        timeout=120,
        message=f"every node's directory lists the {want} people of the others",
        interval=0.25,
    )


def wait_group_everywhere(nodes: Nodes, group) -> None:
    want = (group.seq, group.head, len(EVERYONE))
    wait_until(
        lambda: all(nodes.group(node, group.group_id.hex) == want for node in NODES),
        timeout=60,
        message="every node holds the group at its last change, with 50 members",
        interval=0.02,
    )


# --- latency -------------------------------------------------------------------------------
def one_message(nodes: Nodes, sender, group, text: str) -> dict:
    from messaging.group_messages import send_group_message

    expected = len(EVERYONE) - 1
    home = EVERYONE[sender.username]
    per_node = {node: PEOPLE_PER_NODE - (node == home) for node in NODES}
    t0 = time.time()
    message = send_group_message(sender=sender, group=group, text=text)
    t_call = time.time()
    message_hex = uuid.UUID(str(message.group_message_id)).hex

    def all_stored():
        found = nodes.arrivals(message_hex)
        return found if all(found[node][0] >= per_node[node] for node in NODES) else None

    found = wait_until(
        all_stored,
        timeout=MESSAGE_TIMEOUT_S,
        message=f"the 49 copies of {text!r} stored",
        interval=0.01,
    )

    def all_acknowledged():
        rows, delivered, last = nodes.acknowledged("hq", message.pk)
        return last if rows == delivered == expected else None

    acked = wait_until(
        all_acknowledged,
        timeout=MESSAGE_TIMEOUT_S,
        message=f"hq has all 49 deliveries of {text!r} acknowledged",
        interval=0.01,
    )
    arrived = {node: (ts(last) - t0) * 1000 for node, (_, last) in found.items()}
    return {
        "stored_ms": max(arrived.values()),
        "acked_ms": (ts(acked) - t0) * 1000,
        "call_ms": (t_call - t0) * 1000,
        "per_node_ms": arrived,
        "copies": sum(n for n, _ in found.values()),
    }


def seal_times(sender, group, n: int) -> tuple[list[float], list[float]]:
    """ms of preparing a message's five envelopes for its 49 recipients (look-ups, the
    content encrypted once, 49 key wraps, five signatures), and of the encryption and
    wraps alone; nothing is stored or sent."""
    from accounts.keys import box_key_for
    from messaging.group_messages import seal_for_nodes
    from messaging.groups import load_state
    from messaging.outbox import now_ms, resolve_recipient
    from peers import groups as wire

    by_node = wire.recipients(load_state(group), sender=sender.username)
    keys = {u: resolve_recipient(u).box_key for names in by_node.values() for u in names}
    whole, wraps = [], []
    for i in range(n):
        t0 = time.perf_counter()
        seal_for_nodes(
            sender=sender,
            group=group,
            message_id=str(uuid.uuid4()),
            at_seq=group.seq,
            created_ms=now_ms(),
            payload={"text": f"sealed only {i}"},
            by_node=by_node,
        )
        t1 = time.perf_counter()
        wire.seal_content(
            {"text": f"sealed only {i}"},
            sender_box_key=box_key_for(sender.keys),
            recipient_box_keys=keys,
        )
        t2 = time.perf_counter()
        whole.append((t1 - t0) * 1000)
        wraps.append((t2 - t1) * 1000)
    return whole, wraps


# --- sustained -----------------------------------------------------------------------------
class Sender:
    """One person's group page on their node, logged in over HTTP; posts its form."""

    def __init__(self, net: Network, node: str, username: str, secret: str, gid: str):
        self.node, self.username = node, username
        self.url = f"{net.node(node).url}/groups/{gid}/"
        self.session = net.login(node, username, PASSWORD, secret)
        page = self.session.get(self.url, timeout=HTTP_TIMEOUT_S)
        page.raise_for_status()
        self.token = csrf_token(page.text)

    def post(self, text: str) -> None:
        response = self.session.post(
            self.url,
            data={"csrfmiddlewaretoken": self.token, "text": text},
            timeout=HTTP_TIMEOUT_S,
            allow_redirects=False,
        )
        if response.status_code != 302:
            answer = f"HTTP {response.status_code} {response.text[:300]}"
            raise RuntimeError(f"{self.username}: {answer}")


def sustained(nodes: Nodes, senders: list[Sender], total: int) -> dict:
    tag = f"sustained {uuid.uuid4().hex[:8]} "
    per = total // len(senders)
    sent: dict[str, str] = {}  # text -> its sender
    starts: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    gate = threading.Barrier(len(senders), timeout=30)

    def run(k: int, sender: Sender) -> None:
        mine = {}
        try:
            gate.wait()
            with lock:
                starts.append(time.time())
            for i in range(per):
                text = f"{tag}{k}/{i} from {sender.node}"
                sender.post(text)
                mine[text] = sender.username
        except Exception as error:  # reported after the join, the counts still made
            errors.append(f"{sender.username}: {error}")
        with lock:
            sent.update(mine)

    threads = [threading.Thread(target=run, args=(k, s)) for k, s in enumerate(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    t_sent = time.time()
    t_first = min(starts) if starts else t_sent
    expected = len(sent) * (len(EVERYONE) - 1)
    log(f"{len(sent)} sent in {t_sent - t_first:.1f} s; waiting for {expected} copies")
    complete = True
    try:
        wait_until(
            lambda: nodes.tagged_count(tag) >= expected,
            timeout=SETTLE_S,
            message=f"{expected} copies stored",
            interval=0.1,
        )
    except Exception:  # counted below as lost
        complete = False
    t_stored_seen = time.time()

    # (text, recipient) -> rows; the latest stored_at of all
    copies: dict[tuple[str, str], int] = {}
    last_stored = 0.0
    per_node_last: dict[str, float] = {}
    for node, text, recipient, rows, last in nodes.tagged_copies(tag):
        copies[(text, recipient)] = copies.get((text, recipient), 0) + rows
        stamp = ts(last)
        last_stored = max(last_stored, stamp)
        per_node_last[node] = max(per_node_last.get(node, 0.0), stamp)
    wanted = {(text, u) for text, author in sent.items() for u in EVERYONE if u != author}
    lost = sum(1 for key in wanted if key not in copies)
    duplicated = sum(rows - 1 for rows in copies.values() if rows > 1)
    unexpected = sum(1 for key in copies if key not in wanted)

    # acknowledged on the senders' nodes: every delivery row delivered
    def all_acknowledged():
        found = [nodes.tagged_sent(s.node, tag) for s in senders]
        done = all(rows == delivered for _, rows, delivered, _ in found)
        return found if done else None

    try:
        acked = wait_until(
            all_acknowledged,
            timeout=max(5.0, SETTLE_S - (time.time() - t_sent)),
            message="every delivery row acknowledged",
            interval=0.1,
        )
    except Exception:
        acked = [nodes.tagged_sent(s.node, tag) for s in senders]
    out_rows = sum(n for n, _, _, _ in acked)
    last_acked = max((ts(last) for _, _, _, last in acked if last), default=None)
    unacked = sum(rows - delivered for _, rows, delivered, _ in acked)
    return {
        "messages": len(sent),
        "copies_expected": expected,
        "copies_found": sum(min(rows, 1) for key, rows in copies.items() if key in wanted),
        "complete": complete,
        "lost": lost,
        "duplicated": duplicated,
        "unexpected": unexpected,
        "send_errors": errors,
        "sender_out_rows": out_rows,
        "unacknowledged_deliveries": unacked,
        "send_s": t_sent - t_first,
        "stored_s": (last_stored - t_first) if last_stored else None,
        "acked_s": (last_acked - t_first) if last_acked else None,
        "seen_s": t_stored_seen - t_first,
        "per_node_last_stored_s": {
            n: round(v - t_first, 2) for n, v in sorted(per_node_last.items())
        },
        "senders": [f"{s.username}@{s.node}" for s in senders],
    }


# --- the run -------------------------------------------------------------------------------
def measure(root: Path, plan: Plan) -> dict:
    phases: dict[str, float] = {}
    mark = time.time()

    def phase(name: str) -> None:
        nonlocal mark
        now = time.time()
        phases[name] = round(now - mark, 1)
        mark = now

    with Network(root, nodes=NODES, settings=BENCH_SETTINGS) as net:
        phase("network start (5 nodes)")
        secrets = create_people(net)
        phase("50 people (create_person)")
        nodes = Nodes(net)
        wait_directories(nodes)
        phase("directories complete")
        log(f"network up, {len(EVERYONE)} people listed everywhere ({phases})")

        # This process becomes hq's web process: same settings, database and broker.
        os.environ.update(net.node("hq").env)
        import django

        django.setup()
        from accounts.models import User
        from messaging.groups import create_group

        creator = User.objects.get(username="hqu00")
        t0 = time.time()
        group = create_group(
            creator=creator,
            name="Bench: all offices",
            usernames=[u for u in EVERYONE if u != creator.username],
        )
        t_created = time.time()
        wait_group_everywhere(nodes, group)
        group_everywhere_s = time.time() - t0
        phase("group created and known everywhere")

        # warm-up: one message, not counted
        one_message(nodes, creator, group, "warm-up")
        watch = CpuWatch(net)
        probes = [
            one_message(nodes, creator, group, f"latency probe {i} ✓ 👩‍💻")
            for i in range(plan.latency)
        ]
        cpu_latency = watch.done()
        phase(f"latency ({plan.latency} messages)")
        whole, wraps = seal_times(creator, group, plan.seal)
        phase("sealing timed")

        people = [(node, usernames(node)[1]) for node in SENDER_NODES]
        senders = [Sender(net, node, u, secrets[u], str(group.group_id)) for node, u in people]
        watch = CpuWatch(net)
        bulk = sustained(nodes, senders, plan.sustained)
        cpu_bulk = watch.done()
        phase(f"sustained ({plan.sustained} messages)")

    per_node = {n: statistics.median(p["per_node_ms"][n] for p in probes) for n in NODES}
    return {
        "plan": plan.__dict__,
        "nodes": list(NODES),
        "people": len(EVERYONE),
        "group_create_call_ms": round((t_created - t0) * 1000, 1),
        "group_known_everywhere_s": round(group_everywhere_s, 2),
        "latency": {
            "stored_ms": [p["stored_ms"] for p in probes],
            "acked_ms": [p["acked_ms"] for p in probes],
            "call_ms": [p["call_ms"] for p in probes],
            "copies": [p["copies"] for p in probes],
            "per_node_p50_ms": {k: round(v, 1) for k, v in per_node.items()},
            "first_node_ms": [min(p["per_node_ms"].values()) for p in probes],
            "seal_ms": whole,
            "seal_wraps_only_ms": wraps,
            "cpu_s": cpu_latency,
        },
        "sustained": {**bulk, "cpu_s": cpu_bulk},
        "phases_s": phases,
    }


def failures(result: dict) -> list[str]:
    bulk = result["sustained"]
    found = [f"{k} {bulk[k]}" for k in ("lost", "duplicated", "unexpected") if bulk[k]]
    found += bulk["send_errors"]
    if bulk["sender_out_rows"] != bulk["messages"]:
        found.append(f"{bulk['sender_out_rows']} sent rows for {bulk['messages']} messages")
    return found


def cpu_line(cpu: dict, messages: int) -> str:
    ours = sum(cpu["processes"].values())
    return (
        f"{ours * 1000 / max(messages, 1):.0f} ms per message over this network's processes; "
        f"by kind, s: {cpu_by_kind(cpu['processes'])}; the machine was busy "
        f"{cpu['machine_busy_s']} of {cpu['wall_s'] * cpu['cores']:.1f} core-s "
        f"({cpu['cores']} cores x {cpu['wall_s']} s), other programs {cpu['others_s']} s"
    )


def report(figures: Figures, result: dict) -> list[str]:
    """Add the figures; returns what went wrong (copies lost, duplicated, unexpected)."""
    lat, bulk = result["latency"], result["sustained"]
    n = result["plan"]["latency"]
    print(
        f"  (5 offices x 10 people; sender on hq, this process as hq's web process; "
        f"group known on every node {result['group_known_everywhere_s']} s after create)"
    )
    for p in (50, 99):
        figures.add(
            f"group of 50 on 5 nodes: send -> stored for all 49 p{p}",
            pct(lat["stored_ms"], p),
            "ms",
            n=n,
            other_programs_cpu_s=lat["cpu_s"]["others_s"],
        )
    for p in (50, 99):
        figures.add(
            f"group of 50: send -> sender sees 49 delivered p{p}",
            pct(lat["acked_ms"], p),
            "ms",
            n=n,
        )
    figures.add(
        "  of which the send call (seal 49 + write) p50",
        pct(lat["call_ms"], 50),
        "ms",
        p99_ms=round(pct(lat["call_ms"], 99), 2),
    )
    figures.add(
        "  of which sealing 5 envelopes for 49 p50",
        pct(lat["seal_ms"], 50),
        "ms",
        wraps_only_p50_ms=round(pct(lat["seal_wraps_only_ms"], 50), 2),
        n=len(lat["seal_ms"]),
    )
    figures.add(
        "  send -> first node has its copies p50",
        pct(lat["first_node_ms"], 50),
        "ms",
        per_node_p50_ms=lat["per_node_p50_ms"],
    )
    print(f"  (per node, send -> its copies stored, p50 ms: {lat['per_node_p50_ms']})")
    print(f"  (CPU during the latency part: {cpu_line(lat['cpu_s'], n)})")
    rate = bulk["messages"] / bulk["stored_s"] if bulk["stored_s"] else None
    per = max(bulk["messages"], 1)
    figures.add(
        "group of 50: sustained, stored on every node",
        rate,
        "msg/s",
        messages=bulk["messages"],
        copies=bulk["copies_expected"],
        senders=bulk["senders"],
        send_phase_s=round(bulk["send_s"], 2),
        stored_s=round(bulk["stored_s"], 2) if bulk["stored_s"] else None,
        per_node_last_stored_s=bulk["per_node_last_stored_s"],
        cpu_ms_per_message=round(sum(bulk["cpu_s"]["processes"].values()) * 1000 / per, 1),
        machine_busy_core_s=bulk["cpu_s"]["machine_busy_s"],
        other_programs_cpu_s=bulk["cpu_s"]["others_s"],
    )
    figures.add(
        "  the same in copies stored",
        rate * (result["people"] - 1) if rate else None,
        "copies/s",
    )
    figures.add(
        "  senders' 302s (send phase alone)",
        bulk["messages"] / bulk["send_s"] if bulk["send_s"] else None,
        "msg/s",
    )
    figures.add(
        "group of 50: sustained, every delivery acknowledged",
        bulk["messages"] / bulk["acked_s"] if bulk["acked_s"] else None,
        "msg/s",
        unacknowledged=bulk["unacknowledged_deliveries"],
    )
    figures.add("group sustained: lost copies", bulk["lost"], "copies", target="0")
    figures.add("group sustained: duplicated copies", bulk["duplicated"], "copies", target="0")
    figures.add(
        "group sustained: copies to non-recipients", bulk["unexpected"], "copies", target="0"
    )
    print(f"  (CPU during the sustained part: {cpu_line(bulk['cpu_s'], bulk['messages'])};")
    print(f"   by process, s: {bulk['cpu_s']['processes']})")
    print(f"  (time spent: {result['phases_s']})")
    problems = failures(result)
    for problem in problems:
        print(f"  GROUPS FAILED: {problem}")
    return problems


def run_in_child(*, quick: bool, keep: bool, timeout_s: float = 1500) -> dict:
    """Run this module in a process of its own (its Django is its own network's hq) and
    return its result; its progress goes to this process's stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("P2P_", "DJANGO_"))}
    env.pop("DATABASE_URL", None)
    argv = [PYTHON, "-m", "bench.groups", "--json"]
    argv += ["--quick"] if quick else []
    argv += ["--keep"] if keep else []
    result = subprocess.run(
        argv, env=env, cwd=BASE_DIR, stdout=subprocess.PIPE, text=True, timeout=timeout_s
    )
    lines = result.stdout.strip().splitlines()
    if not lines or not lines[-1].startswith("{"):
        raise RuntimeError(f"bench.groups failed ({result.returncode}):\n{result.stdout}")
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the network's folder")
    parser.add_argument("--json", action="store_true", help="the result as JSON on stdout")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="p2psocial-bench-groups-"))
    log(f"network in {root}")
    try:
        result = measure(root, QUICK if args.quick else FULL)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
        return 1 if failures(result) else 0
    return 1 if report(Figures(), result) else 0


if __name__ == "__main__":
    sys.exit(main())
