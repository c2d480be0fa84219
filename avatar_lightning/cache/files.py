"""Files that appear whole or not at all: the project's one atomic writer and one staged-folder helper.

A file is written under a temporary name beside its destination (:func:`temporary_path`, the mode a plain
``open()`` would give it) and renamed over it once complete (:func:`replace_durably`, a rename within a folder
is atomic; file and folder are fsynced). :func:`atomic_path` and :func:`atomic_write` wrap the two for writers
that finish in one block; the cache's array writer and the video writer, whose files stay open across many
calls, use the two steps directly. A whole folder (a cache, an avatar) is built in a hidden sibling and moved
into place by :func:`staged_folder`. A killed process leaves the previous file or folder as it was and, at
worst, a hidden temporary beside it (``inspect`` lists those).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from avatar_lightning.cache.manifest import MANIFEST_NAME
from avatar_lightning.errors import CacheError


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (a no-op where the file system refuses)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode a plain ``open()`` would give a new file (mkstemp's 0600 would hide a cache from its group)."""
    return 0o666 & ~_umask()


def temporary_path(path: Path, suffix: str = ".tmp") -> Path:
    """A new empty hidden file beside ``path`` (``.<name>.XXXX<suffix>``) with a plain file's mode."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    os.chmod(name, new_file_mode())
    return Path(name)


def replace_durably(temporary: Path, path: Path) -> None:
    """Flush ``temporary`` to disk and rename it over ``path``."""
    with open(temporary, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; it becomes ``path`` only if the block completes.

    ``suffix`` ends the temporary's name (a writer that infers the format from the name needs ``.tmp.png``).
    """
    path = Path(path)
    temporary = temporary_path(path, suffix)
    try:
        yield temporary
        replace_durably(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object], suffix: str = ".tmp") -> None:
    """``write(temporary)``, then the temporary renamed over ``path``: never a half-written ``path``."""
    with atomic_path(path, suffix) as temporary:
        write(temporary)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write(path, lambda temporary: temporary.write_text(text))


def check_output_folder(out: Path, overwrite: bool) -> None:
    """Refuse an output folder holding a cache (unless ``overwrite``), a file, or unrelated files."""
    if (out / MANIFEST_NAME).exists() and not overwrite:
        raise CacheError(f"{out / MANIFEST_NAME} already exists; pass --overwrite to replace that cache")
    if out.exists() and not out.is_dir():
        raise CacheError(f"{out} exists and is not a directory")
    if out.is_dir() and not (out / MANIFEST_NAME).exists() and any(out.iterdir()):
        raise CacheError(f"{out} exists, is not empty and is not a capture cache; choose another --out")


@contextlib.contextmanager
def staged_folder(out: str | os.PathLike[str], stage: str) -> Iterator[Path]:
    """Yield a hidden folder beside ``out`` to build a whole folder in; it replaces ``out`` when the block completes.

    On an exception the staging folder is removed and ``out`` is left as it was. An old folder at ``out`` is
    moved aside before the new one takes its name, then removed, so ``out`` is never half old, half new.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.{stage}-", dir=out.parent))
    os.chmod(staging, 0o777 & ~_umask())  # a plain mkdir's mode, not mkdtemp's 0700
    try:
        yield staging
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            out.replace(old / out.name)
        staging.replace(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
