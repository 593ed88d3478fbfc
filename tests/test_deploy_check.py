"""Production settings pass Django's deployment checks, for both roles, in the runtime
virtualenv (requirements.txt alone)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.runtime import runtime_python

BASE_DIR = Path(__file__).resolve().parent.parent


def production_env(tmp_path: Path, role: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("P2P_", "DJANGO_"))}
    env.update(
        {
            "P2P_ROLE": role,
            "P2P_PRODUCTION": "1",
            "P2P_SECRET_KEY": "x" * 20 + "-production-secret-key-for-the-deploy-check-" + "y" * 20,
            "P2P_DATA_DIR": str(tmp_path),
            "P2P_ALLOWED_HOSTS": "hq.example.com",
            "P2P_PUBLIC_URL": "https://hq.example.com",
            "P2P_NODE_NAME": "hq" if role == "node" else "",
        }
    )
    return env


@pytest.mark.parametrize("role", ["node", "loginserver"])
def test_it_passes_check_deploy_with_production_settings(tmp_path, role):
    result = subprocess.run(
        [runtime_python(), "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=BASE_DIR,
        env=production_env(tmp_path, role),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_it_refuses_to_start_in_production_without_a_secret_key(tmp_path):
    env = production_env(tmp_path, "node")
    del env["P2P_SECRET_KEY"]
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    assert "P2P_SECRET_KEY must be set in production" in result.stderr


def test_it_refuses_debug_pages_in_production(tmp_path):
    env = production_env(tmp_path, "node")
    env["P2P_DEBUG"] = "1"
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    assert "P2P_DEBUG must not be on with P2P_PRODUCTION" in result.stderr
