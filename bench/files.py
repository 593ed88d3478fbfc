"""One file from a person on hq to a person on branch, end to end, on a real network.

The upload goes through hq's upload view over HTTP (streamed from a file on disk, as a
browser sends it), branch's worker pulls and verifies the ciphertext, and the figure
ends when branch's database says it holds the file. Meanwhile every process of both
nodes (web, worker and its children, beat) is sampled for its resident memory: a file
must never be held whole in memory, so no process may grow with the file's size.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psutil
import requests

from p2psocial.devnet import Network, csrf_token, wait_until

SAMPLE_EVERY_S = 0.05
MB = 1_000_000
# filetype tells the type from the first bytes: an MP4's header, then padding
MP4_HEAD = bytes.fromhex("0000001c667479706973346d0000020069736f6d69736f326d703431")


def _multipart_body(folder: Path, size: int, *, boundary: str) -> Path:
    """A multipart/form-data body with one file of size bytes, written to disk in pieces."""
    path = folder / f"upload-{uuid.uuid4().hex}.body"
    chunk = os.urandom(1024 * 1024)
    with open(path, "wb") as out:
        out.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="bench.mp4"\r\nContent-Type: video/mp4\r\n\r\n'.encode()
        )
        out.write(MP4_HEAD)
        left = size - len(MP4_HEAD)
        while left > 0:
            piece = chunk[: min(left, len(chunk))]
            out.write(piece)
            left -= len(piece)
        out.write(f"\r\n--{boundary}--\r\n".encode())
    return path


class MemoryWatch:
    """Samples the resident memory of every process of the given nodes (children too)."""

    def __init__(self, net: Network, nodes: tuple[str, ...]) -> None:
        self.roots = [(name, pid) for name in nodes for pid in net.node(name).pids()]
        self.baseline: dict[int, tuple[str, int]] = {}
        self.peak: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _processes(self):
        for node, pid in self.roots:
            try:
                root = psutil.Process(pid)
                for process in [root, *root.children(recursive=True)]:
                    yield node, process
            except psutil.Error:
                continue

    def _sample(self) -> None:
        for node, process in self._processes():
            try:
                rss = process.memory_info().rss
                label = f"{node}:{' '.join(process.cmdline()[1:4])[:60]}"
            except psutil.Error:
                continue
            self.baseline.setdefault(process.pid, (label, rss))
            self.peak[process.pid] = max(self.peak.get(process.pid, 0), rss)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY_S):
            self._sample()

    def __enter__(self) -> MemoryWatch:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def growth_mb(self) -> dict[str, float]:
        """Peak growth over the first sample, per process, in MB."""
        return {
            f"{label} [{pid}]": round((self.peak[pid] - rss) / MB, 1)
            for pid, (label, rss) in self.baseline.items()
        }


def _stored(branch_db: Path, file_id: str) -> bool:
    conn = sqlite3.connect(f"file:{branch_db}?mode=ro", uri=True, timeout=20)
    try:
        row = conn.execute(
            "SELECT state FROM messaging_attachment a JOIN messaging_message m "
            "ON a.message_id = m.id WHERE a.file_id = ? AND m.direction = 'in'",
            (file_id.replace("-", ""),),
        ).fetchone()
    finally:
        conn.close()
    return row is not None and row[0] == "stored"


def transfer(
    net: Network, session: requests.Session, *, recipient: str, size: int, timeout_s: float
) -> dict:
    """Send one file of size bytes to recipient on branch; returns the figures."""
    hq, branch = net.node("hq"), net.node("branch")
    page = session.get(f"{hq.url}/chat/{recipient}/", timeout=30)
    page.raise_for_status()
    boundary = uuid.uuid4().hex
    with tempfile.TemporaryDirectory(prefix="p2psocial-bench-file-") as folder:
        body = _multipart_body(Path(folder), size, boundary=boundary)
        with MemoryWatch(net, ("hq", "branch")) as memory:
            started = time.perf_counter()
            with open(body, "rb") as stream:
                response = session.post(
                    f"{hq.url}/chat/{recipient}/files/",
                    data=stream,
                    headers={
                        "Content-Type": f"multipart/form-data; boundary={boundary}",
                        "X-CSRFToken": csrf_token(page.text),
                        "Accept": "application/json",
                    },
                    timeout=timeout_s,
                )
            uploaded = time.perf_counter() - started
            if response.status_code != 201:
                raise RuntimeError(f"upload refused: {response.status_code} {response.text[:300]}")
            file_id = response.json()["message"]["file"]["id"]
            wait_until(
                lambda: _stored(branch.data_dir / "db.sqlite3", file_id),
                timeout=timeout_s,
                message="branch holds the file",
                interval=0.05,
            )
            elapsed = time.perf_counter() - started
    growth = memory.growth_mb()
    return {
        "mb_per_s": size / MB / elapsed,
        "seconds": elapsed,
        "upload_s": uploaded,
        "max_growth_mb": max(growth.values(), default=0.0),
        "growth_mb": growth,
    }
