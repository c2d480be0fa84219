"""``python -m avatar_lightning inspect CACHE``: what a capture cache holds, and whether it is sound.

Checks (:mod:`avatar_lightning.cache.check`) every listed array (its file exists, its header matches the manifest,
float arrays hold no NaN or Inf where they must not), whether the stage that created the cache finished
(``meta.complete``), and what interrupted writes left behind. Every problem is listed, then the exit code is 2
if there was any.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from avatar_lightning.cache.check import find_problems, leftovers, staging_leftovers
from avatar_lightning.cache.store import CaptureCache
from avatar_lightning.errors import CacheError


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m avatar_lightning inspect",
        description="Summarise a capture cache and check every listed array's file against the manifest "
                    "(and its values for NaN/Inf); exit code 2 if anything is wrong.",
    )
    parser.add_argument("cache", help="capture cache folder")
    parser.add_argument("--no-check", action="store_true", help="skip opening every array file")
    args = parser.parse_args(argv)
    root = Path(args.cache)
    staged = [] if root.exists() else staging_leftovers(root)
    if staged:  # a stage killed before it ever finished: say so, rather than only "does not exist"
        raise CacheError(f"capture cache {root} does not exist: an interrupted run left the incomplete "
                         f"{', '.join(p.name for p in staged)} beside it (safe to delete); re-run the stage that "
                         f"makes {root.name}")
    cache = CaptureCache(root)
    print(cache.describe())
    if args.no_check:
        return 0
    problems = find_problems(cache)
    left = leftovers(cache)
    if left:
        print("left by interrupted runs (not part of the cache; safe to delete):")
        print("\n".join(f"  {path}" for path in left))
    if problems:
        print(f"error: {len(problems)} problem(s) in {cache.root}:", file=sys.stderr)
        print("\n".join(f"  {line}" for line in problems), file=sys.stderr)
        return 2
    print("every listed array checked: sound")
    return 0
