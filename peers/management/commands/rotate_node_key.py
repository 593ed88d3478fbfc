"""manage.py rotate_node_key: give this office node a new signing key."""

from django.core.management.base import BaseCommand, CommandError

from peers import services
from peers.identity import NotJoined


class Command(BaseCommand):
    help = (
        "Rotate this node's signing key: create a new key, announce it to the login server "
        "signed with the current one, and store it once the login server accepted it."
    )

    def handle(self, *args, **options):
        try:
            old_fp, new_fp = services.rotate_node_key()
        except services.LoginServerError as error:
            raise CommandError(
                f"{error.code}: {error.message} (the old key stays in use)"
            ) from None
        except NotJoined as error:
            raise CommandError(str(error)) from None
        self.stdout.write(f"old node key fingerprint: {old_fp}")
        self.stdout.write(f"new node key fingerprint: {new_fp}")
        self.stdout.write(
            "The login server accepts only the new key from now on; peers pick it up at "
            "their next directory fetch."
        )
        self.stdout.write(
            "This node's running web and worker processes switch to the new key within "
            "seconds; no restart is needed."
        )
