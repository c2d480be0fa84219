"""The capture cache contract: round trip, atomic writes, validation, window reads."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from avatar_lightning.cache import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    CacheError,
    CameraRecord,
    CaptureCache,
    PageBudget,
    SequenceRecord,
    release_pages,
)
from avatar_lightning.testing import FEATURES, LATENTS, make_tiny_cache, tiny_camera, tiny_sequences
from tests.helpers import REPO_ROOT


def test_round_trip(tiny_cache: CaptureCache) -> None:
    reopened = CaptureCache(tiny_cache.root)
    assert reopened.fps == 25.0
    assert reopened.num_frames == 60
    assert [s.name for s in reopened.sequences_in("train")] == ["train_a", "train_b", "train_c"]
    assert [s.name for s in reopened.sequences_in(["val", "test"])] == ["val", "test"]
    train = reopened.rows_in("train")
    assert train.dtype.kind == "i" and np.array_equal(
        train, np.concatenate([np.arange(s.first, s.last + 1) for s in reopened.sequences_in("train")]))
    assert reopened.camera("front") == tiny_camera()
    assert reopened.names("features/*") == [FEATURES]
    features = reopened.array(FEATURES)
    assert isinstance(features, np.memmap)
    assert not features.flags.writeable
    rec = reopened.record(LATENTS)
    assert (rec.shape, rec.dtype, rec.stage, rec.per_frame) == ((60, 3), "float32", "test-fixture", True)
    np.testing.assert_array_equal(reopened.read(FEATURES, 10, 14), np.asarray(features)[10:14])
    manifest = json.loads((tiny_cache.root / MANIFEST_NAME).read_text())
    assert manifest["schema_version"] == SCHEMA_VERSION
    assert manifest["arrays"][FEATURES]["file"] == "features/toy.npy"
    assert manifest["cameras"][0]["K"][0][0] == 10.0


def test_chunked_writer_and_non_per_frame_arrays(tiny_cache: CaptureCache) -> None:
    with tiny_cache.array_writer("tracking/pose", (60, 6), np.float32, stage="test", per_frame=True) as out:
        for start in range(0, 60, 16):
            out[start:start + 16] = start
    assert tiny_cache.read("tracking/pose")[17, 0] == 16
    tiny_cache.write_array("template/triangles", np.arange(9, dtype=np.int64).reshape(3, 3), stage="test")
    assert not tiny_cache.record("template/triangles").per_frame
    assert sorted(p.name for p in (tiny_cache.root / "tracking").iterdir()) == ["pose.npy"]


def test_overwriting_an_array_replaces_it(tiny_cache: CaptureCache) -> None:
    tiny_cache.write_array(FEATURES, np.ones((60, 7), np.float16), stage="again", per_frame=True)
    reopened = CaptureCache(tiny_cache.root)
    assert reopened.record(FEATURES).shape == (60, 7)
    assert reopened.array(FEATURES).dtype == np.float16


def test_exception_mid_write_keeps_previous_state(tiny_cache: CaptureCache) -> None:
    before = tiny_cache.read(FEATURES)
    manifest_before = (tiny_cache.root / MANIFEST_NAME).read_text()
    with pytest.raises(RuntimeError, match="boom"):
        with tiny_cache.array_writer(FEATURES, (60, 5), np.float32, stage="broken", per_frame=True) as out:
            out[:10] = 0
            raise RuntimeError("boom")
    assert (tiny_cache.root / MANIFEST_NAME).read_text() == manifest_before
    np.testing.assert_array_equal(CaptureCache(tiny_cache.root).read(FEATURES), before)
    assert not [p for p in (tiny_cache.root / "features").iterdir() if p.name.endswith(".tmp")]


def test_writer_killed_mid_array_leaves_previous_state_readable(tiny_cache: CaptureCache) -> None:
    """A real SIGKILL while a large array is being filled: no manifest entry for it, old data intact."""
    before = tiny_cache.read(FEATURES)
    manifest_before = (tiny_cache.root / MANIFEST_NAME).read_text()
    script = textwrap.dedent(f"""
        import sys, time, numpy as np
        from avatar_lightning.cache import CaptureCache
        cache = CaptureCache({str(tiny_cache.root)!r})
        with cache.array_writer("features/toy", (60, 5), np.float32, stage="doomed", per_frame=True) as out:
            out[:30] = 1.0
            print("filling", flush=True)
            time.sleep(60)
        with cache.array_writer("latents/new", (60, 2), np.float32, stage="doomed", per_frame=True) as out:
            out[:] = 0
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "filling"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert (tiny_cache.root / MANIFEST_NAME).read_text() == manifest_before
    reopened = CaptureCache(tiny_cache.root)
    np.testing.assert_array_equal(reopened.read(FEATURES), before)
    assert not reopened.has("latents/new")
    assert reopened.record(FEATURES).stage == "test-fixture"


def _add_array(root: str, name: str) -> None:
    CaptureCache(root).write_array(name, np.zeros((60, 2), np.float32), stage=name, per_frame=True)


def test_concurrent_writers_both_land(tiny_cache: CaptureCache) -> None:
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_add_array, args=(str(tiny_cache.root), f"latents/run{i}")) for i in range(3)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    assert CaptureCache(tiny_cache.root).names("latents/run*") == ["latents/run0", "latents/run1", "latents/run2"]


def test_reading_a_window_does_not_read_the_whole_array(tmp_path: Path) -> None:
    frames = 2000
    cache = CaptureCache.create(tmp_path / "c", fps=25, num_frames=frames,
                                sequences=[SequenceRecord("all", 0, frames - 1, "train")])
    with cache.array_writer("cameras/front/frames", (frames, 64, 64, 3), np.uint8, stage="t", per_frame=True) as out:
        for start in range(0, frames, 250):
            out[start:start + 250] = start // 250
    whole_bytes = frames * 64 * 64 * 3
    tracemalloc.start()
    try:
        window = CaptureCache(cache.root).read("cameras/front/frames", 1500, 1508)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert window.shape == (8, 64, 64, 3) and window[0, 0, 0, 0] == 6
    assert peak < whole_bytes / 100, f"reading 8 frames allocated {peak} bytes of a {whole_bytes}-byte array"


# ---------------------------------------------------------------------------------------------- bad input
def test_missing_cache_path_names_it(tmp_path: Path) -> None:
    with pytest.raises(CacheError, match=r"does not exist.*synth"):
        CaptureCache(tmp_path / "nowhere")


def test_folder_without_manifest(tmp_path: Path) -> None:
    with pytest.raises(CacheError, match="manifest.json is missing"):
        CaptureCache(tmp_path)


def test_newer_schema_is_refused_and_left_alone(tiny_cache: CaptureCache) -> None:
    path = tiny_cache.root / MANIFEST_NAME
    data = json.loads(path.read_text())
    data["schema_version"] = SCHEMA_VERSION + 1
    path.write_text(json.dumps(data))
    with pytest.raises(CacheError, match=rf"{path}.*newer.*upgrade"):
        CaptureCache(tiny_cache.root)
    assert json.loads(path.read_text())["schema_version"] == SCHEMA_VERSION + 1


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda m: m.pop("fps"), "malformed manifest"),
        (lambda m: m["sequences"].append({"name": "x", "first": 55, "last": 70, "split": "test"}), "ends at frame 70"),
        (lambda m: m["sequences"][1].update(first=10), "overlap"),
        (lambda m: m["sequences"][0].update(split="training"), "split must be one of"),
        (lambda m: m["cameras"][0].update(K=[[1, 0], [0, 1]]), "K must be"),
        (lambda m: m["arrays"]["features/toy"].update(shape=[59, 5]), "expected 60 frames"),
    ],
)
def test_malformed_manifest_names_file_and_problem(tiny_cache: CaptureCache, mutate, message: str) -> None:
    path = tiny_cache.root / MANIFEST_NAME
    data = json.loads(path.read_text())
    mutate(data)
    path.write_text(json.dumps(data))
    with pytest.raises(CacheError, match=message) as info:
        CaptureCache(tiny_cache.root)
    assert str(path) in str(info.value)


def test_corrupt_manifest_json(tiny_cache: CaptureCache) -> None:
    (tiny_cache.root / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(CacheError, match="not valid JSON"):
        CaptureCache(tiny_cache.root)


def test_array_whose_shape_disagrees_with_manifest(tiny_cache: CaptureCache) -> None:
    path = tiny_cache.root / "features" / "toy.npy"
    np.save(path, np.zeros((60, 4), np.float32))  # changed behind the cache's back
    content = path.read_bytes()
    with pytest.raises(CacheError, match=r"toy\.npy.*float32\[60, 4\].*manifest says float32\[60, 5\]"):
        tiny_cache.array(FEATURES)
    assert path.read_bytes() == content


def test_truncated_array_file(tiny_cache: CaptureCache) -> None:
    path = tiny_cache.root / "latents" / "toy.npy"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CacheError, match=r"toy\.npy"):
        tiny_cache.array(LATENTS)


def test_missing_array_names_the_producing_command(tiny_cache: CaptureCache) -> None:
    with pytest.raises(CacheError, match=r"features/mediapipe.*features --cache DIR --extractor"):
        tiny_cache.record("features/mediapipe")
    with pytest.raises(CacheError, match=r"latents/vae.*encode"):
        tiny_cache.array("latents/vae")
    (tiny_cache.root / "latents" / "toy.npy").unlink()
    with pytest.raises(CacheError, match="missing on disk"):
        tiny_cache.array(LATENTS)


def test_create_refuses_to_replace_an_existing_cache(tiny_cache: CaptureCache) -> None:
    manifest = (tiny_cache.root / MANIFEST_NAME).read_text()
    with pytest.raises(CacheError, match="already exists.*overwrite"):
        CaptureCache.create(tiny_cache.root, fps=30, num_frames=5)
    assert (tiny_cache.root / MANIFEST_NAME).read_text() == manifest
    replaced = CaptureCache.create(tiny_cache.root, fps=30, num_frames=5, overwrite=True)
    assert replaced.num_frames == 5 and replaced.names() == []


def test_write_validation(tiny_cache: CaptureCache) -> None:
    with pytest.raises(CacheError, match="must have 60 rows"):
        tiny_cache.write_array("latents/short", np.zeros((59, 2)), stage="t", per_frame=True)
    with pytest.raises(CacheError, match="invalid array name"):
        tiny_cache.write_array("../escape", np.zeros(3), stage="t")
    with pytest.raises(CacheError, match="object arrays"):
        tiny_cache.write_array("meta/objects", np.array([{}], dtype=object), stage="t")
    with pytest.raises(CacheError, match="no camera 'left'"):
        tiny_cache.camera("left")
    with pytest.raises(CacheError, match="duplicate camera"):
        CaptureCache.create(tiny_cache.root / "dup", fps=25, num_frames=1, cameras=[tiny_camera(), tiny_camera()])
    with pytest.raises(CacheError, match="width and height"):
        CameraRecord("c", np.eye(3).tolist(), np.eye(3).tolist(), [0, 0, 0], 0, 10)


def test_describe_lists_everything(tiny_cache: CaptureCache) -> None:
    text = tiny_cache.describe()
    for expected in ("60 frames at 25 fps", "train_a", "front", FEATURES, "[60, 5]", "test-fixture"):
        assert expected in text
    assert len(tiny_sequences()) == len(tiny_cache.sequences)


def test_files_get_the_usual_permissions(tiny_cache: CaptureCache) -> None:
    """Atomic writes go through mkstemp (mode 0600); the final files must be readable like any other file."""
    mask = os.umask(0)
    os.umask(mask)
    expected = 0o666 & ~mask
    for path in (tiny_cache.root / MANIFEST_NAME, tiny_cache.root / "features" / "toy.npy"):
        assert path.stat().st_mode & 0o777 == expected, path


def test_no_temporary_files_left_behind(tiny_cache: CaptureCache) -> None:
    leftovers = [p for p in tiny_cache.root.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def _resident_file_mib() -> float:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(fields["RssFile"].split()[0]) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads Linux's /proc")
def test_released_pages_leave_the_resident_set_and_keep_the_data(tmp_path: Path) -> None:
    """Streaming a long capture through its memory maps must not keep it resident (animate's flat RSS)."""
    cache = make_tiny_cache(tmp_path / "cache")
    rows = np.arange(cache.num_frames * 2**18, dtype=np.float32).reshape(cache.num_frames, -1)  # 60 MiB
    with cache.array_writer("big", rows.shape, rows.dtype, stage="test", per_frame=True) as out:
        for start in range(0, len(rows), 4):
            out[start : start + 4] = rows[start : start + 4]
            release_pages(out)  # written pages flushed before they are dropped: nothing may be lost
    mapped = cache.array("big")
    before = _resident_file_mib()
    assert float(mapped[:, ::1024].sum(dtype=np.float64)) == float(rows[:, ::1024].sum(dtype=np.float64))
    touched = _resident_file_mib()
    release_pages(mapped[10:20])  # a view reaches the map it came from
    after = _resident_file_mib()
    assert touched - before > 48 and touched - after > 48, (before, touched, after)
    np.testing.assert_array_equal(mapped, rows)  # faulted back in from disk
    release_pages(rows)  # an in-memory array: nothing to do


def test_a_page_budget_releases_once_spent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import avatar_lightning.cache.pages as cache_module

    released: list[int] = []
    monkeypatch.setattr(cache_module, "release_pages", lambda array: released.append(id(array)))
    first, second = np.zeros(10), np.zeros(10)
    budget = PageBudget(budget=100)
    budget.charge(first, 60)
    assert released == []
    budget.charge(second, 60)
    assert sorted(released) == sorted([id(first), id(second)])
    budget.charge(first, 60)
    assert len(released) == 2 and budget.spent == 60
