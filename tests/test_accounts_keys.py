"""Keys per person, private parts encrypted under the master key (checked in the real DB file)."""

from __future__ import annotations

import base64
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import nacl.exceptions
import nacl.secret
import pyotp
import pytest
from django.db import connection
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from accounts.keys import box_key_for, signing_key_for
from accounts.models import UserKeys
from tests.helpers.factories import make_person

ROOT = Path(__file__).resolve().parent.parent


def _manage(data_dir: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("P2P_", "DATABASE_URL"))}
    env.update({"P2P_DATA_DIR": str(data_dir), "P2P_ROLE": "node"})
    return subprocess.run(
        [sys.executable, "manage.py", *args, "--skip-checks"],
        cwd=ROOT,
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


@pytest.fixture(scope="module")
def node_dir(tmp_path_factory) -> Path:
    """A node data folder with a migrated SQLite file and one person made by create_person."""
    data_dir = tmp_path_factory.mktemp("node")
    _manage(data_dir, "migrate", "--no-input")
    _manage(
        data_dir,
        "create_person",
        "carol",
        "--full-name",
        "Carol",
        "--password-stdin",
        "--totp-secret",
        pyotp.random_base32(),
        input="a long enough passphrase\n",
    )
    return data_dir


def _stored_keys(data_dir: Path) -> tuple[bytes, bytes, bytes, bytes]:
    db = sqlite3.connect(data_dir / "db.sqlite3")
    try:
        return db.execute(
            "SELECT k.sign_public, k.box_public, k.sign_private_encrypted, k.box_private_encrypted "
            "FROM accounts_userkeys k JOIN accounts_user u ON u.id = k.user_id "
            "WHERE u.username = 'carol'"
        ).fetchone()
    finally:
        db.close()


def _master_box(data_dir: Path) -> nacl.secret.SecretBox:
    key_file = data_dir / "master.key"
    assert key_file.stat().st_mode & 0o077 == 0, "the master key file must be private"
    return nacl.secret.SecretBox(base64.b64decode(key_file.read_bytes().strip()))


def test_the_private_keys_are_not_in_the_database_files(node_dir):
    sign_public, box_public, sign_blob, box_blob = _stored_keys(node_dir)
    box = _master_box(node_dir)
    signing = SigningKey(box.decrypt(sign_blob))
    encryption = PrivateKey(box.decrypt(box_blob))
    assert bytes(signing.verify_key) == sign_public
    assert bytes(encryption.public_key) == box_public
    for path in node_dir.glob("db.sqlite3*"):  # the database, its WAL and shared memory
        content = path.read_bytes()
        assert bytes(signing) not in content, path
        assert bytes(encryption) not in content, path
        assert base64.b64encode(bytes(signing)) not in content, path


def test_the_private_keys_do_not_open_with_another_key(node_dir):
    _, _, sign_blob, _ = _stored_keys(node_dir)
    wrong = nacl.secret.SecretBox(b"\x01" * 32)
    with pytest.raises(nacl.exceptions.CryptoError):
        wrong.decrypt(sign_blob)


def test_create_person_prints_what_it_made(node_dir):
    out = _manage(
        node_dir, "create_person", "dave", "--password", "another long passphrase", "--staff"
    ).stdout
    assert "created person dave" in out
    assert "[office administrator]" in out
    assert "set up at first login" in out


def test_create_person_refuses_an_existing_name(node_dir):
    with pytest.raises(subprocess.CalledProcessError) as failure:
        _manage(node_dir, "create_person", "carol", "--password", "yet another passphrase")
    assert "already exists" in failure.value.stderr


@pytest.mark.django_db
def test_every_person_gets_their_own_keys():
    alice, _ = make_person("alice")
    bob, _ = make_person("bob")
    assert bytes(alice.keys.sign_public) != bytes(bob.keys.sign_public)
    assert bytes(alice.keys.box_public) != bytes(bob.keys.box_public)
    assert bytes(signing_key_for(alice.keys).verify_key) == bytes(alice.keys.sign_public)
    assert bytes(box_key_for(bob.keys).public_key) == bytes(bob.keys.box_public)


@pytest.mark.django_db
def test_the_stored_blob_is_not_the_raw_private_key():
    alice, _ = make_person("alice")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT sign_private_encrypted FROM accounts_userkeys WHERE user_id = %s", [alice.pk]
        )
        (blob,) = cursor.fetchone()
    raw = bytes(signing_key_for(UserKeys.objects.get(user=alice)))
    assert raw not in bytes(blob)
