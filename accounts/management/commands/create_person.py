"""manage.py create_person USERNAME [--full-name ..] [--position ..] [--admin]
[--password-stdin | --password P] [--totp-secret BASE32] [--location ..] [--description ..]
[--picture FILE]"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from accounts import roles, services, twofactor
from accounts.errors import CodeRejected, PictureRejected, UsernameRejected
from accounts.management.passwords import add_password_options, password_from
from accounts.models import User
from peers.protocol import fingerprint
from peers.queries import username_held_elsewhere


class Command(BaseCommand):
    help = (
        "Create a person (account, profile and keys). With --totp-secret the person gets a "
        "confirmed authenticator with that base32 secret and skips enrolment."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")
        parser.add_argument("--full-name", default="")
        parser.add_argument("--position", default="")
        parser.add_argument(
            "--admin",
            "--staff",
            dest="admin",
            action="store_true",
            help="an office administrator: the admin site, to manage this office's people and "
            "watch deliveries (never message content). --staff is the same.",
        )
        add_password_options(parser)
        parser.add_argument(
            "--totp-secret", help="base32 authenticator secret to install, confirmed"
        )
        parser.add_argument("--location", default="")
        parser.add_argument("--description", default="")
        parser.add_argument(
            "--picture", help="an image file for the profile (checked and re-encoded)"
        )

    def handle(self, *args, **options) -> None:
        if settings.IS_LOGIN_SERVER:
            raise CommandError(
                "create_person is for office nodes; the login server holds no people, only "
                "its administrators: manage.py create_admin USERNAME"
            )
        username = options["username"]
        if User.objects.filter(username=username).exists():
            raise CommandError(f"a person named {username!r} already exists")
        holder = username_held_elsewhere(username)
        if holder:
            raise CommandError(
                f"the name {username!r} belongs to someone at the {holder} office (names are "
                "unique across the network): choose another one"
            )
        password, generated = password_from(options)
        try:
            with transaction.atomic():
                user = services.create_person(
                    username=username,
                    password=password,
                    full_name=options["full_name"],
                    position=options["position"],
                )
                if options["admin"]:
                    roles.make_administrator(user=user, role=roles.OFFICE_ADMINISTRATORS)
                if options["totp_secret"]:
                    twofactor.add_totp_device(user=user, secret_b32=options["totp_secret"])
                if options["picture"] or options["location"] or options["description"]:
                    self._set_profile(user, options)
        except UsernameRejected as exc:
            raise CommandError(f"username {username!r} refused: {exc.message}") from exc
        except OSError as exc:
            raise CommandError(f"cannot read the picture: {exc.strerror}") from exc
        except PictureRejected as exc:
            raise CommandError(exc.message) from exc
        except ValidationError as exc:
            raise CommandError("password refused: " + " ".join(exc.messages)) from exc
        except CodeRejected as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(
            f"created person {user.username} (id {user.pk})"
            + (" [office administrator]" if options["admin"] else "")
        )
        self.stdout.write(f"signing key fingerprint: {fingerprint(bytes(user.keys.sign_public))}")
        if options["totp_secret"]:
            self.stdout.write("authenticator: confirmed (from --totp-secret)")
        else:
            self.stdout.write("authenticator: set up at first login")
        if generated:
            self.stdout.write(f"generated password: {password}")

    def _set_profile(self, user: User, options: dict) -> None:
        profile = user.profile
        fields = {
            "user": user,
            "full_name": profile.full_name,
            "position": profile.position,
            "location": options["location"],
            "description": options["description"],
        }
        if options["picture"]:
            with open(options["picture"], "rb") as picture:
                services.update_profile(**fields, picture=picture)
        else:
            services.update_profile(**fields)
