"""manage.py rotate_user_keys USERNAME: new keys for a person, published at once."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from accounts.models import User
from messaging.sending import rotate_person_keys
from peers.protocol import fingerprint


class Command(BaseCommand):
    help = (
        "Give a person new signing and encryption keys. Their waiting messages are sealed "
        "again with the new keys; the login server signs a new record at the next presence "
        "report (requested at once); peers see a key change."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")

    def handle(self, *args, username: str, **options) -> None:
        user = User.objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"there is nobody called {username!r} on this node")
        old = fingerprint(bytes(user.keys.sign_public))
        keys, resealed = rotate_person_keys(user=user)
        self.stdout.write(f"old signing key fingerprint: {old}")
        self.stdout.write(f"new signing key fingerprint: {fingerprint(bytes(keys.sign_public))}")
        self.stdout.write(f"waiting messages sealed again with the new keys: {resealed}")
