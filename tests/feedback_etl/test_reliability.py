"""A failing step never destroys earlier results (issue 16, section 4): the build-aside helper, the
scratch folders a killed run leaves, and a mapping file nested too deeply to parse."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from feedback_etl.mapping import load_mapping
from feedback_etl.outputs import build_aside, building_dir, replace_dir, scratch_dir
from schemas.errors import InputFileError


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_build_aside_swaps_in_on_success_only(tmp_path: Path) -> None:
    target = tmp_path / "we[ir]d *name"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with build_aside(target) as work:
            (work / "new.txt").write_text("half")
            raise RuntimeError("step failed")
    assert _tree(target) == {"old.txt": b"old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]  # building folder removed
    with build_aside(target) as work:
        (work / "new.txt").write_text("new")
    assert _tree(target) == {"new.txt": b"new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_build_aside_resumes_a_tagged_folder_and_repairs_a_cut_swap(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with build_aside(target, tag="abc", keep_on_error=True) as work:
            (work / "shard-0").write_text("done")
            raise KeyboardInterrupt
    assert (building_dir(target, "abc") / "shard-0").is_file() and not target.exists()
    with build_aside(target, tag="abc", keep_on_error=True) as work:
        assert (work / "shard-0").read_text() == "done"  # resumed, not started over
    assert _tree(target) == {"shard-0": b"done"}
    # A crash between the two renames of a swap: the old folder is hidden, the target missing.
    os.replace(target, tmp_path / ".out.old-0123")
    with pytest.raises(ValueError):
        with build_aside(target):
            raise ValueError
    assert _tree(target) == {"shard-0": b"done"}


def test_replace_dir_into_missing_parent(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "a").write_text("1")
    replace_dir(staging, tmp_path / "deep" / "target")
    assert _tree(tmp_path / "deep" / "target") == {"a": b"1"}


def test_scratch_folders_of_killed_runs_are_swept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """kill -9 skips cleanup; the next run removes folders whose owner is gone, never a live one."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    prefix = "causalrm-test-"
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time, tempfile; tempfile.tempdir = sys.argv[1]; "
         "from feedback_etl.outputs import scratch_dir\n"
         "with scratch_dir(sys.argv[2]) as d:\n    print(d, flush=True); time.sleep(600)",
         str(tmp_path), prefix],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2],
    )
    try:
        live = Path(child.stdout.readline().strip())
        assert live.is_dir()
        dead = tmp_path / f"{prefix}dead"
        dead.mkdir()
        (dead / "texts.parquet").write_text("left by a killed run")
        legacy = tmp_path / f"{prefix}legacy"  # an empty folder from a version without lock files
        legacy.mkdir()
        old = time.time() - 3600
        for folder in (live, dead, legacy):
            os.utime(folder, (old, old))
        with scratch_dir(prefix) as mine:
            assert mine.is_dir()
            assert live.is_dir(), "a live run's scratch folder was removed"
            assert not dead.exists() and not legacy.exists()
        assert not mine.exists()
        child.kill()
        child.wait()
        with scratch_dir(prefix):
            assert not live.exists()  # its owner is gone now
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize(
    "toml",
    [
        "a = " + "[" * 5000 + "]" * 5000 + "\n",
        "[fields]\nevent_id = " + "{ b = " * 3000 + "1" + " }" * 3000 + "\n",
    ],
    ids=["deep-array", "deep-inline-table"],
)
def test_deeply_nested_mapping_is_one_clear_error(tmp_path: Path, toml: str) -> None:
    path = tmp_path / "map.toml"
    path.write_text(toml)
    with pytest.raises(InputFileError, match="nests arrays or inline tables too deeply") as info:
        load_mapping(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
