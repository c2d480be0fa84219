"""``python -m avatar_lightning inspect CACHE``: what a capture cache holds, and whether it is sound."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from avatar_lightning.cache import CaptureCache


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m avatar_lightning inspect",
        description="Summarise a capture cache and check every listed array's file against the manifest.",
    )
    parser.add_argument("cache", help="capture cache folder")
    parser.add_argument("--no-check", action="store_true", help="skip opening every array file")
    args = parser.parse_args(argv)
    cache = CaptureCache(args.cache)
    if not args.no_check:
        for name in cache.names():
            cache.array(name)  # raises CacheError naming the file if its header disagrees
    print(cache.describe())
    return 0
