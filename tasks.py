#!/usr/bin/env python3
"""The README's two commands, needing nothing but Python 3.11 (no make, no pre-made environment).

    python3.11 tasks.py demo   # set up, then run the main job on the built-in synthetic actor
    python3.11 tasks.py test   # set up, then run the fast CPU test suite (extra args go to pytest)

Set-up creates (or reuses) a virtual environment at ``.venv`` (``AVATAR_LIGHTNING_VENV`` overrides) and
re-installs the project only when ``pyproject.toml`` or ``constraints.txt`` changed.
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
        b"".join((ROOT / name).read_bytes() for name in ("pyproject.toml", "constraints.txt"))
    ).hexdigest()
    if not STAMP.exists() or STAMP.read_text().strip() != digest:
        print("installing avatar_lightning and its dependencies (a few minutes the first time)", flush=True)
        subprocess.run(
            [str(_python()), "-m", "pip", "install", "--quiet", "-c", str(ROOT / "constraints.txt"),
             "-e", f"{ROOT}[dev]"],
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


DEMO_DIR = ROOT / "demo"


def _pipeline_so_far(python: Path) -> list[list[str]]:
    """The main job with the stages that exist today; the `demo` command replaces it once it lands."""
    actor = DEMO_DIR / "actor"
    runs = DEMO_DIR / "runs"
    return [
        [str(python), "-m", "avatar_lightning", "synth", "--out", str(actor), "--preset", "small"],
        [str(python), "-m", "avatar_lightning", "fit", "--config", "experiments/head_vae.yaml",
         f"--data.init_args.cache_dir={actor}", f"--trainer.default_root_dir={runs}",
         f"--trainer.logger.init_args.save_dir={runs}", "--trainer.max_time=00:00:05:00",
         "--trainer.val_check_interval=200", "--trainer.limit_val_batches=8",
         "--model.init_args.kl_warmup_steps=200", "--model.init_args.adversarial_start=250"],
        [str(python), "-m", "avatar_lightning", "test", "--config", "experiments/head_vae.yaml",
         f"--data.init_args.cache_dir={actor}", f"--trainer.default_root_dir={runs}",
         f"--trainer.logger.init_args.save_dir={runs}", "--ckpt_path=LAST"],
        [str(python), "-m", "avatar_lightning", "encode", "--ckpt", "LAST", "--cache", str(actor),
         "--name", "head_vae"],
    ]


def _last_checkpoint() -> str:
    found = sorted((DEMO_DIR / "runs").rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit("error: the head VAE wrote no checkpoint")
    return str(found[-1])


def run_demo(extra: list[str]) -> int:
    python = ensure_environment()
    probe = "from avatar_lightning.cli import STAGES; print('demo' in STAGES)"
    has_demo = subprocess.run([str(python), "-c", probe], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip() == "True"
    if has_demo:
        return subprocess.run([str(python), "-m", "avatar_lightning", "demo", *extra], cwd=ROOT).returncode
    # Until the one-command demo lands: the synthetic actor, a 5-minute head VAE, its held-out scores, latents.
    for command in _pipeline_so_far(python):
        command = [arg.replace("LAST", _last_checkpoint()) if "LAST" in arg else arg for arg in command]
        print("\n$ " + " ".join(command[1:]), flush=True)
        code = subprocess.run(command, cwd=ROOT).returncode
        if code:
            return code
    print(f"\ndemo outputs under {DEMO_DIR}: actor/ (capture cache, previews/*.mp4), runs/ (logs, image grids)")
    return 0


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
