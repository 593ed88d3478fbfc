"""A small TCP proxy on loopback that delays, drops or cuts a fraction of what passes.

    proxy = FaultProxy(listen_port, upstream_port, seed=7, delay=0.05, drop=0.02, cut=0.02)
    proxy.start() ... proxy.stop()

Put in front of a node's web process, it makes peers' deliveries to that node meet a
flaky network: a request is held back (delay), the connection is closed before the
request reaches the node (drop), or closed halfway through the node's answer (cut: the
node did the work, the sender never sees the acknowledgement). Decisions come from one
seeded random generator, so a run can be repeated. Loopback only.
"""

from __future__ import annotations

import random
import socket
import threading
from collections import Counter

BUFFER = 65536


class FaultProxy:
    def __init__(
        self,
        listen_port: int,
        upstream_port: int,
        *,
        seed: int,
        delay: float = 0.0,
        drop: float = 0.0,
        cut: float = 0.0,
        delay_s: tuple[float, float] = (0.2, 1.5),
    ):
        self.listen_port = listen_port
        self.upstream_port = upstream_port
        self.delay, self.drop, self.cut = delay, drop, cut
        self.delay_s = delay_s
        self.counts: Counter[str] = Counter()
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def _draw(self) -> float:
        with self._lock:
            return self._random.random()

    def _uniform(self, low: float, high: float) -> float:
        with self._lock:
            return self._random.uniform(low, high)

    def start(self) -> None:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.listen_port))
        server.listen(128)
        server.settimeout(0.5)
        self._server = server
        self._thread = threading.Thread(target=self._accept, name="faultproxy", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._server is not None:
            self._server.close()

    def _accept(self) -> None:
        assert self._server is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
        except OSError:
            self.counts["upstream_down"] += 1
            client.close()
            return
        upstream.settimeout(None)
        client.settimeout(None)
        closed = threading.Event()

        def close_both() -> None:
            closed.set()
            for sock in (client, upstream):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

        def requests_in() -> None:
            """Client to node: each chunk (a request, usually) may be held back or dropped."""
            try:
                while not closed.is_set():
                    data = client.recv(BUFFER)
                    if not data:
                        break
                    roll = self._draw()
                    if roll < self.drop:
                        self.counts["dropped"] += 1
                        break
                    if roll < self.drop + self.delay:
                        self.counts["delayed"] += 1
                        self._stopping.wait(self._uniform(*self.delay_s))
                    upstream.sendall(data)
                    self.counts["passed"] += 1
            except OSError:
                pass
            close_both()

        def answers_out() -> None:
            """Node to client: an answer may be cut halfway, after the node did the work."""
            try:
                while not closed.is_set():
                    data = upstream.recv(BUFFER)
                    if not data:
                        break
                    if self._draw() < self.cut:
                        self.counts["cut"] += 1
                        client.sendall(data[: len(data) // 2])
                        break
                    client.sendall(data)
            except OSError:
                pass
            close_both()

        threading.Thread(target=answers_out, daemon=True).start()
        requests_in()
