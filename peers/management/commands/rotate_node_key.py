"""manage.py rotate_node_key: give this office node a new signing key."""

from django.core.management.base import BaseCommand, CommandError

from peers import services
from peers.identity import NotJoined


class Command(BaseCommand):
    help = (
        "Rotate this node's signing key: create a new key, keep it as pending, announce it "
        "to the login server signed with the current one, and use it once the login server "
        "accepted it. If a run was interrupted, running the command again finishes it."
    )

    def handle(self, *args, **options):
        try:
            rotation = services.rotate_node_key()
        except services.RotationInterrupted as error:
            raise CommandError(
                f"{error.code}: {error.message}. The login server may or may not have "
                "switched to the new key; this node keeps it as pending and signs with the "
                "old one meanwhile. It is safe to run manage.py rotate_node_key again: it "
                "asks the login server which key it holds and finishes this rotation."
            ) from None
        except services.LoginServerError as error:
            raise CommandError(
                f"{error.code}: {error.message} (the old key stays in use)"
            ) from None
        except NotJoined as error:
            raise CommandError(str(error)) from None
        if rotation.resumed:
            self.stdout.write("Finished the key rotation that an interrupted run had started.")
        self.stdout.write(f"old node key fingerprint: {rotation.old_fingerprint}")
        self.stdout.write(f"new node key fingerprint: {rotation.new_fingerprint}")
        self.stdout.write(
            "The login server accepts only the new key from now on; peers pick it up at "
            "their next directory fetch."
        )
        self.stdout.write(
            "This node's running web and worker processes switch to the new key within "
            "seconds; no restart is needed."
        )
