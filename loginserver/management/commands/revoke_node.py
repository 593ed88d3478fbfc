"""manage.py revoke_node NODE_NAME: refuse everything the node sends, hide its users."""

from django.core.management.base import BaseCommand, CommandError

from loginserver import services
from peers.protocol import ProtocolError


class Command(BaseCommand):
    help = "Revoke an enrolled node: its requests are refused and its users leave the directory."

    def add_arguments(self, parser):
        parser.add_argument("node_name")

    def handle(self, *args, node_name: str, **options):
        try:
            node = services.revoke_node(name=node_name)
        except ProtocolError as error:
            raise CommandError(error.message) from None
        self.stdout.write(f"node {node.name!r} revoked at {node.revoked_at:%Y-%m-%d %H:%M:%S} UTC")
