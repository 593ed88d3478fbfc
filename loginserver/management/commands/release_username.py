"""manage.py release_username USERNAME: free a name its node no longer lists."""

from django.core.management.base import BaseCommand, CommandError

from loginserver import services
from peers.protocol import ProtocolError


class Command(BaseCommand):
    help = (
        "Release a username reserved to a node (its reports left the person out, or the node "
        "was revoked), so that another node can claim it with its next report."
    )

    def add_arguments(self, parser):
        parser.add_argument("username")

    def handle(self, *args, username: str, **options):
        try:
            row = services.release_username(username=username)
        except ProtocolError as error:
            raise CommandError(error.message) from None
        self.stdout.write(f"username {username!r} released (it was reserved to {row.node.name!r})")
