"""Arrange storage trouble with real files: a foreign SQLite writer, HTML forms submitted
as a browser does, and a size-limited file system (tmpfs) for a full disk."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

from p2psocial.devnet import BASE_DIR

# Takes SQLite's write lock (BEGIN IMMEDIATE, as an admin's DB browser with unsaved edits
# does) and keeps it until its stdin closes, or for argv[2] seconds at most, so that a
# test that forgets it cannot hang.
_HOLD_SQLITE = """
import select, sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
db.execute("BEGIN IMMEDIATE")
db.execute("CREATE TABLE IF NOT EXISTS held (at REAL)")
db.execute("INSERT INTO held VALUES (julianday('now'))")
print("holding", flush=True)
select.select([sys.stdin], [], [], float(sys.argv[2]))
db.execute("COMMIT")
"""


@contextlib.contextmanager
def foreign_sqlite_writer(db_path: Path, *, at_most_s: float = 60.0) -> Iterator[None]:
    """Another process holding the database's SQLite write lock (not the writer queue)."""
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLD_SQLITE, str(db_path), str(at_most_s)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline() == "holding\n"
        yield
    finally:
        child.stdin.close()
        child.wait(timeout=at_most_s + 30)
        child.stdout.close()


def new_wal_database(path: Path) -> None:
    """An SQLite file in WAL mode with one table, `notes`, as the node's database would be."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")


def run_django(
    code: str, *, data_dir: Path, env: dict[str, str] | None = None, timeout: float = 90
) -> subprocess.CompletedProcess:
    """Run code in a fresh process with the project's settings on data_dir's database."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("P2P_", "DJANGO_"))}
    clean.pop("DATABASE_URL", None)
    clean.update(
        {
            "DJANGO_SETTINGS_MODULE": "p2psocial.settings",
            "P2P_DATA_DIR": str(data_dir),
            "PYTHONPATH": str(BASE_DIR),
        }
    )
    clean.update(env or {})
    prelude = "import django\ndjango.setup()\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + code],
        env=clean,
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class _FormFields(HTMLParser):
    """The fields a browser submits for the first form whose id ends with form_suffix."""

    def __init__(self, form_suffix: str) -> None:
        super().__init__(convert_charrefs=True)
        self.form_suffix = form_suffix
        self.fields: list[tuple[str, str]] = []
        self._state = "before"  # before, in, after
        self._textarea: list[str] | None = None
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form" and self._state == "before" and a.get("id", "").endswith(self.form_suffix):
            self._state = "in"
        if self._state != "in":
            return
        name = a.get("name")
        if tag == "input" and name:
            kind = a.get("type", "text")
            if kind in ("checkbox", "radio"):
                if "checked" in a:
                    self.fields.append((name, a.get("value") or "on"))
            elif kind not in ("submit", "button", "file", "image", "reset"):
                self.fields.append((name, a.get("value", "")))
        elif tag == "textarea" and name:
            self._textarea = [name, ""]
        elif tag == "select" and name:
            self._select = name
        elif tag == "option" and self._select and "selected" in a:
            self.fields.append((self._select, a.get("value", "")))

    def handle_data(self, data: str) -> None:
        if self._textarea is not None:
            self._textarea[1] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "textarea" and self._textarea is not None:
            name, text = self._textarea
            self.fields.append((name, text.removeprefix("\n")))
            self._textarea = None
        elif tag == "select":
            self._select = None
        elif tag == "form" and self._state == "in":
            self._state = "after"


def form_fields(html: str, *, form_suffix: str = "_form") -> list[tuple[str, str]]:
    """What a browser posts for the page's form (the admin's change form by default)."""
    parser = _FormFields(form_suffix)
    parser.feed(html)
    if parser._state == "before":
        raise AssertionError(f"no form with an id ending in {form_suffix!r} on the page")
    return parser.fields


def replaced(fields: list[tuple[str, str]], **values: str) -> list[tuple[str, str]]:
    """fields with the named ones set to new values (names with '-' are given with '__')."""
    wanted = {k.replace("__", "-"): v for k, v in values.items()}
    missing = set(wanted) - {name for name, _ in fields}
    assert not missing, f"the form has no field {sorted(missing)}"
    return [(name, wanted.get(name, value)) for name, value in fields]


# --- a full disk -----------------------------------------------------------------------------
@functools.cache
@functools.cache  # one mount probe per test run, however many modules ask
def can_mount_tmpfs() -> str | None:
    """Why a size-limited tmpfs cannot be mounted here (None when it can): root only, and
    a container may refuse mounts even to root (tried once, on an empty folder)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "mounting a size-limited tmpfs needs root (CI runs as root)"
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "no mount/umount command"
    with tempfile.TemporaryDirectory() as probe:
        tried = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", probe],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if tried.returncode != 0:
            return f"mount -t tmpfs was refused: {tried.stderr.strip()[:200]}"
        subprocess.run(["umount", probe], capture_output=True, timeout=30)
    return None


@contextlib.contextmanager
def small_filesystem(path: Path, *, size: str) -> Iterator[Path]:
    """path as the mount point of a tmpfs of the given size (e.g. "12m"), unmounted after."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def fill_filesystem(path: Path, *, chunk_bytes: int = 64 * 1024) -> Path:
    """Write a filler file in path until the file system refuses (ENOSPC); returns it."""
    filler = path / "filler.bin"
    block = b"\0" * chunk_bytes
    with open(filler, "wb", buffering=0) as fh:
        size = chunk_bytes
        while size >= 512:
            try:
                while True:
                    fh.write(block[:size])
            except OSError:
                size //= 2
    return filler


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize
