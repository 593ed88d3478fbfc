"""manage.py create_admin USERNAME [--full-name NAME] [--password-stdin | --password P]
[--totp-secret BASE32]: an administrator of the login server."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from accounts import services, twofactor
from accounts.errors import CodeRejected, UsernameRejected
from accounts.management.passwords import add_password_options, password_from
from accounts.models import User


class Command(BaseCommand):
    help = (
        "Create a login server administrator: the admin site (password and authenticator "
        "code) to issue enrolment tokens, revoke nodes, compare fingerprints and see "
        "presence. Without --totp-secret a new authenticator secret is printed once. "
        "Login server only; on an office node use create_person --admin."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")
        parser.add_argument("--full-name", default="")
        add_password_options(parser)
        parser.add_argument(
            "--totp-secret", help="base32 authenticator secret to install (else one is made)"
        )

    def handle(self, *args, **options) -> None:
        if not settings.IS_LOGIN_SERVER:
            raise CommandError(
                "create_admin is for the login server (P2P_ROLE=loginserver); on an office "
                "node use: manage.py create_person USERNAME --admin"
            )
        username = options["username"]
        if User.objects.filter(username=username).exists():
            raise CommandError(f"an account named {username!r} already exists")
        password, generated = password_from(options)
        try:
            user, device = services.create_login_server_administrator(
                username=username,
                password=password,
                full_name=options["full_name"],
                totp_secret_b32=options["totp_secret"],
            )
        except UsernameRejected as exc:
            raise CommandError(f"username {username!r} refused: {exc.message}") from exc
        except ValidationError as exc:
            raise CommandError("password refused: " + " ".join(exc.messages)) from exc
        except CodeRejected as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(f"created {user.username} (id {user.pk}) [login server administrator]")
        if options["totp_secret"]:
            self.stdout.write("authenticator: confirmed (from --totp-secret)")
        else:
            self.stdout.write(
                "authenticator: add this secret to an authenticator app (shown once):"
            )
            self.stdout.write(f"authenticator secret: {twofactor.secret_base32(device)}")
            self.stdout.write(f"authenticator URI: {twofactor.otpauth_uri(device)}")
        if generated:
            self.stdout.write(f"generated password: {password}")
        self.stdout.write("log in at /admin/ with the password and a code from the app")
