"""The pushed event stream, measured on a real network.

- A message sent on hq (this process acts as hq's web process, as bench.run does) until
  the "conversation.new" event reaches the recipient's open stream on branch.
- Many open streams on branch: the CPU branch's web process spends while they are idle
  (keepalives only), and how long a node-wide event takes to reach every one of them.
"""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import threading
import time

import psutil
import requests

from p2psocial.devnet import Network

SAMPLE_CPU_S = 10.0


class Stream:
    """One open event stream (GET /events/) read in a thread; events go to a queue with
    the time they arrived."""

    def __init__(self, session: requests.Session, base: str) -> None:
        self.events: queue.Queue[tuple[float, str, dict]] = queue.Queue()
        self.open = threading.Event()
        self._stop = threading.Event()
        self._response = session.get(
            base + "/events/",
            headers={"Accept": "text/event-stream"},
            stream=True,
            timeout=(5, 60),
        )
        self._response.raise_for_status()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        kind, data = "", ""
        try:
            for line in self._response.iter_lines(chunk_size=1, decode_unicode=True):
                if self._stop.is_set():
                    return
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    data = line[5:].strip()
                elif line == "" and kind:
                    if kind == "ready":
                        self.open.set()
                    else:
                        self.events.put((time.time(), kind, json.loads(data or "{}")))
                    kind, data = "", ""
        except (requests.RequestException, ValueError, AttributeError):
            return

    def next(self, kind: str, timeout: float) -> tuple[float, dict]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {kind} event within {timeout} s")
            arrived, got, data = self.events.get(timeout=left)
            if got == kind:
                return arrived, data

    def close(self) -> None:
        """Drop the connection at once, as a closed tab does (closing the response alone
        waits for the reader, which waits for the next keepalive)."""
        self._stop.set()
        with contextlib.suppress(AttributeError, OSError):
            self._response.raw._fp.fp.raw._sock.shutdown(socket.SHUT_RDWR)
        self._response.close()


def message_to_stream(net: Network, send, receiver: requests.Session, n: int) -> list[float]:
    """ms from send() on hq to the recipient's stream on branch, n times."""
    stream = Stream(receiver, net.node("branch").url)
    try:
        if not stream.open.wait(10):
            raise TimeoutError("the stream did not open")
        latencies = []
        for i in range(n):
            started = time.time()
            send(f"event probe {i}")
            arrived, _ = stream.next("conversation.new", timeout=30)
            latencies.append((arrived - started) * 1000)
        return latencies
    finally:
        stream.close()


def idle_streams(net: Network, session: requests.Session, count: int) -> dict:
    """count open streams on branch: its web process's CPU while idle, then the time a
    node-wide event (as a presence change is, under a kind of its own) takes to reach
    all of them."""
    branch = net.node("branch")
    streams = [Stream(session, branch.url) for _ in range(count)]
    try:
        for stream in streams:
            if not stream.open.wait(20):
                raise TimeoutError("a stream did not open")
        web = [
            p
            for pid in branch.pids()
            for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
            if "uvicorn" in " ".join(p.cmdline())
        ]
        before = sum(sum(p.cpu_times()[:2]) for p in web)
        time.sleep(SAMPLE_CPU_S)
        used = sum(sum(p.cpu_times()[:2]) for p in web) - before
        result = branch.manage(
            "shell",
            "-c",
            "import time; from p2psocial import events; "
            "events.publish_all('bench.ping', {}); print(time.time())",
        )
        published = float(result.stdout.strip().splitlines()[-1])
        deadline = time.monotonic() + 30
        arrivals = [
            stream.next("bench.ping", timeout=max(deadline - time.monotonic(), 0.01))[0]
            for stream in streams
        ]
        return {
            "idle_core_percent": used / SAMPLE_CPU_S * 100,
            "fan_out_max_ms": (max(arrivals) - published) * 1000,
        }
    finally:
        for stream in streams:
            stream.close()
