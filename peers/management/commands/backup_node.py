"""Back up a running node: an online SQLite copy, the master key, the media folder and
the attachment files."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connection


class Command(BaseCommand):
    help = (
        "Write a consistent backup of this node into DEST (a new folder): db.sqlite3 (online "
        "backup, safe while the node runs), master.key (mode 0600), media/ and files/ (the "
        "attachments, encrypted). With PostgreSQL, back up the database with pg_dump first; "
        "this command then copies key, media and files."
    )

    def add_arguments(self, parser):
        parser.add_argument("dest", type=Path)

    def handle(self, *args, dest: Path, **options):
        if dest.exists() and any(dest.iterdir()):
            raise CommandError(f"{dest} exists and is not empty")
        dest.mkdir(parents=True, exist_ok=True)
        dest.chmod(0o700)
        if connection.vendor == "sqlite":
            source = sqlite3.connect(str(settings.DATABASES["default"]["NAME"]))
            target = sqlite3.connect(str(dest / "db.sqlite3"))
            with target:
                source.backup(target)
            target.close()
            source.close()
            self.stdout.write(f"database   -> {dest / 'db.sqlite3'}")
        else:
            self.stdout.write("database   -> not copied: use pg_dump for PostgreSQL")
        key_file = Path(settings.MASTER_KEY_FILE)
        if settings.MASTER_KEY_B64:
            self.stdout.write("master key -> not copied: it comes from P2P_MASTER_KEY")
        elif key_file.exists():
            shutil.copy2(key_file, dest / "master.key")
            (dest / "master.key").chmod(0o600)
            self.stdout.write(f"master key -> {dest / 'master.key'} (keep apart from the database)")
        media = Path(settings.MEDIA_ROOT)
        if media.exists():
            shutil.copytree(media, dest / "media")
            self.stdout.write(f"media      -> {dest / 'media'}")
        # After the database: every file a copied row names is there already (files are
        # written before their row and never changed). Uploads being written and pulls
        # under way are not: a restored node pulls those files again.
        files = Path(settings.FILES_DIR)
        if files.exists():
            skip = shutil.ignore_patterns("incoming", "partial")
            shutil.copytree(files, dest / "files", ignore=skip)
            self.stdout.write(f"files      -> {dest / 'files'}")
        self.stdout.write(self.style.SUCCESS("backup complete"))
