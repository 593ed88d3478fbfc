"""The runtime virtualenv: built from requirements.txt alone, as a newcomer or an office
gets it. The demo and the deployment checks run in it, so that a package only the
development requirements bring cannot hide a broken install (bin/test builds it first)."""

from __future__ import annotations

import os
import subprocess
from functools import cache
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent.parent


def runtime_venv() -> Path:
    return Path(os.environ.get("P2P_RUNTIME_VENV") or BASE_DIR / ".venv-runtime")


@cache
def runtime_python() -> str:
    """The runtime virtualenv's python, after `bin/setup` made sure it is installed."""
    venv = runtime_venv()
    subprocess.run(
        ["bash", str(BASE_DIR / "bin" / "setup")],
        cwd=BASE_DIR,
        env={**os.environ, "P2P_VENV": str(venv)},
        stdin=subprocess.DEVNULL,
        check=True,
        timeout=900,
    )
    return str(venv / "bin" / "python")
