"""The password options shared by create_person and create_admin."""

from __future__ import annotations

import secrets
import sys
from argparse import ArgumentParser

from django.core.management.base import CommandError


def add_password_options(parser: ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    group.add_argument(
        "--password", help="the password (visible in the process list; prefer stdin)"
    )


def password_from(options: dict) -> tuple[str, bool]:
    """The password the options give, or a generated one; and whether it was generated."""
    if options["password_stdin"]:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise CommandError("no password on stdin")
        return password, False
    if options["password"]:
        return options["password"], False
    return secrets.token_urlsafe(15), True
