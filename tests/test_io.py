"""Atomic writes and the disk-space check every large artifact goes through."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from invprop.errors import InvpropError
from invprop.io import (
    HOST_TAG,
    atomic_dir,
    atomic_file,
    ensure_free_space,
    file_sha256,
    load_npz,
    save_npz,
    write_json,
)


def test_failed_atomic_dir_keeps_previous_folder_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "artifact"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("good")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("crash halfway")
    assert (target / "a.txt").read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]


def test_atomic_writes_give_the_permissions_of_any_new_file(tmp_path: Path) -> None:
    # Writers that create their file 0o600 (safetensors does) must not leave an artifact or
    # an export that the other users of a shared folder cannot read.
    def write_private(path: Path) -> None:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))

    previous = os.umask(0o027)
    try:
        with atomic_file(tmp_path / "export.safetensors") as tmp:
            write_private(tmp)
        with atomic_dir(tmp_path / "artifact") as tmp:
            write_private(tmp / "part.npz")
    finally:
        os.umask(previous)
    for path in (tmp_path / "export.safetensors", tmp_path / "artifact/part.npz"):
        assert path.stat().st_mode & 0o777 == 0o640, path


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_writes_remove_what_killed_writers_left_and_nothing_else(tmp_path: Path) -> None:
    dead = dead_pid()
    left_by_dead = [
        tmp_path / f".a.json.tmp-{HOST_TAG}-{dead}-0123abcd",  # killed inside write_json
        tmp_path / f".folder.tmp-{HOST_TAG}-{dead}-0123abcd",  # killed inside atomic_dir
        tmp_path / f".done.old-{HOST_TAG}-{dead}-0123abcd",  # killed after its second rename
    ]
    kept = [
        tmp_path / f".b.json.tmp-{HOST_TAG}-{os.getpid()}-0123abcd",  # a live writer's
        tmp_path / f".c.json.tmp-other-machine-{dead}-0123abcd",  # pid means nothing here
        tmp_path / f".gone.old-{HOST_TAG}-{dead}-0123abcd",  # the only copy of gone/
    ]
    (tmp_path / "done").mkdir()
    for path in left_by_dead + kept:
        if ".folder." in path.name or ".old-" in path.name:
            path.mkdir()
            (path / "x.npy").write_bytes(b"data")
        else:
            path.write_bytes(b"partial")
    write_json(tmp_path / "a.json", {"ok": 1})
    assert not [p for p in left_by_dead if p.exists()]
    assert all(p.exists() for p in kept)
    assert (tmp_path / "a.json").is_file() and (tmp_path / "done").is_dir()


def test_too_little_disk_space_fails_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage._replace(free=100 * 2**20))
    ensure_free_space(tmp_path, 10 * 2**20, "small thing")
    with pytest.raises(
        InvpropError,
        match=r"not enough disk space for embeddings .* need about 500 MiB, 100 MiB free",
    ):
        ensure_free_space(tmp_path / "not" / "yet", 500 * 2**20, "embeddings")


def test_save_npz_is_byte_reproducible_and_round_trips(tmp_path: Path) -> None:
    arrays = {"b": np.arange(5, dtype=np.int64), "a": np.ones((2, 3), dtype=np.float32)}
    save_npz(tmp_path / "one.npz", arrays)
    save_npz(tmp_path / "two.npz", dict(reversed(arrays.items())))
    assert file_sha256(tmp_path / "one.npz") == file_sha256(tmp_path / "two.npz")
    loaded = load_npz(tmp_path / "one.npz")
    assert all(np.array_equal(loaded[k], v) for k, v in arrays.items())


def test_pickled_object_arrays_are_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "evil.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(InvpropError, match="unreadable"):
        load_npz(tmp_path / "evil.npz", "graph")
