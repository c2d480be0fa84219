"""Whether a capture cache is sound (the ``inspect`` command's checks): every listed array readable and finite where
it must be, the stage that created the cache finished, and what interrupted writes left behind.
"""

from __future__ import annotations

from pathlib import Path

from avatar_lightning.cache.finite import must_be_finite, nonfinite_rows
from avatar_lightning.cache.layout import producer_of
from avatar_lightning.cache.store import CaptureCache
from avatar_lightning.errors import CacheError


def find_problems(cache: CaptureCache, check_values: bool = True) -> list[str]:
    """Every problem of ``cache``, one line each (empty: sound)."""
    problems = []
    meta = cache.manifest.meta
    if meta.get("complete") is False:
        generator = meta.get("generator", "the stage that created it")
        problems.append(f"incomplete: {generator} did not finish writing this cache (killed or failed); "
                        f"re-run it (synth, prepare or ingest with the same --out)")
    for name in cache.names():
        try:
            data = cache.array(name)
        except CacheError as err:
            problems.append(str(err))
            continue
        if check_values and must_be_finite(name, data.dtype):
            count, first = nonfinite_rows(data)
            if count:
                problems.append(f"{name}: {count} of {len(data)} rows hold NaN or Inf (first: row {first}); "
                                f"re-run {producer_of(name)}")
    return problems


def staging_leftovers(root: Path) -> list[Path]:
    """Unfinished staging folders beside the cache folder ``root`` (whole-cache stages build there, then rename)."""
    return sorted(p for p in root.parent.glob(f".{root.name}.*") if p.is_dir())


def leftovers(cache: CaptureCache) -> list[Path]:
    """Temporary files of interrupted writes inside the cache, and unfinished staging folders beside it."""
    return [*sorted(cache.root.rglob(".*.tmp")), *staging_leftovers(cache.root)]
