"""manage.py join_network: enrol this office node with a login server and a one-time token."""

from django.core.management.base import BaseCommand, CommandError

from peers import protocol, services


class Command(BaseCommand):
    help = (
        "Join the network: create this node's key, enrol it with the login server's one-time "
        "token, pin the login server key and print both fingerprints to compare out of band."
    )

    def add_arguments(self, parser):
        parser.add_argument("--login-server", required=True, help="login server URL")
        parser.add_argument("--token", required=True, help="token from create_enrolment_token")
        parser.add_argument("--name", required=True, help="this node's name, e.g. hq")
        parser.add_argument("--url", required=True, help="this node's public URL")

    def handle(self, *args, login_server: str, token: str, name: str, url: str, **options):
        try:
            result = services.join_network(
                login_server_url=login_server, token=token, name=name, url=url
            )
        except (services.LoginServerError, protocol.ProtocolError) as error:
            raise CommandError(f"{error.code}: {error.message}") from None
        self.stdout.write(f"joined as {result.identity.name!r} ({result.identity.public_url})")
        self.stdout.write(f"login server key fingerprint: {result.login_server_fingerprint}")
        self.stdout.write(f"node key fingerprint: {result.node_fingerprint}")
        self.stdout.write("Compare both fingerprints with the login server's administrator.")
