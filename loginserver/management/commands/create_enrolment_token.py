"""manage.py create_enrolment_token NODE_NAME: a one-time token for a new office node."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from loginserver import services
from peers.protocol import ProtocolError


class Command(BaseCommand):
    help = "Create a one-time enrolment token for a node; the token is the last line printed."

    def add_arguments(self, parser):
        parser.add_argument("node_name")

    def handle(self, *args, node_name: str, **options):
        try:
            row, token = services.create_enrolment_token(node_name=node_name)
        except ProtocolError as error:
            raise CommandError(error.message) from None
        self.stdout.write(f"login server key fingerprint: {services.server_fingerprint()}")
        self.stdout.write(
            f"token for node {row.node_name!r}, single use, expires {row.expires_at:%Y-%m-%d %H:%M}"
            f" UTC ({settings.ENROLMENT_TOKEN_LIFETIME_S} s):"
        )
        self.stdout.write(token)
