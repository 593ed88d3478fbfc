"""backup_node makes a copy a node can be restored from: database, master key, media."""

import os
import subprocess
import sys
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

CHECK_KEYS = (
    "from accounts.models import User; from accounts.keys import signing_key_for;"
    "u = User.objects.get(username='alice');"
    "assert bytes(signing_key_for(u.keys).verify_key) == bytes(u.keys.sign_public);"
    "print('keys ok', u.profile.full_name)"
)


def manage(data_dir: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("P2P_", "DJANGO_"))}
    env.update({"P2P_ROLE": "node", "P2P_DATA_DIR": str(data_dir), "P2P_NODE_NAME": "hq"})
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR, env=env, input=input, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_node_restored_from_its_backup_has_its_people_and_can_use_their_keys(tmp_path):
    live, backup, restored = tmp_path / "live", tmp_path / "backup", tmp_path / "restored"
    assert manage(live, "migrate", "--noinput").returncode == 0
    created = manage(live, "create_person", "alice", "--full-name", "Alice Ünïcode",
                     "--password-stdin", input="a long enough passphrase 42\n")  # fmt: skip
    assert created.returncode == 0, created.stderr

    result = manage(live, "backup_node", str(backup))

    assert result.returncode == 0, result.stderr
    assert "backup complete" in result.stdout
    assert (backup / "master.key").stat().st_mode & 0o777 == 0o600
    # Restore: the backup's files become a new node's data folder.
    restored.mkdir()
    for name in ("db.sqlite3", "master.key"):
        (restored / name).write_bytes((backup / name).read_bytes())
    (restored / "master.key").chmod(0o600)
    check = manage(restored, "shell", "-c", CHECK_KEYS)
    assert check.returncode == 0, check.stderr
    assert "keys ok Alice Ünïcode" in check.stdout


def test_a_backup_is_never_written_over_an_existing_one(tmp_path):
    live, backup = tmp_path / "live", tmp_path / "backup"
    assert manage(live, "migrate", "--noinput").returncode == 0
    backup.mkdir()
    (backup / "keep").write_text("earlier backup")

    result = manage(live, "backup_node", str(backup))

    assert result.returncode != 0
    assert "is not empty" in result.stderr
    assert (backup / "keep").read_text() == "earlier backup"
