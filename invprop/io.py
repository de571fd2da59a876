"""Atomic writes, safe loads and disk checks shared by every stage.

Every artifact is written to a temporary sibling and renamed into place, so a crash leaves
either the previous complete artifact or the new complete one, never a half-written file.
A writer killed outright (SIGKILL, OOM killer) cannot delete its temporary sibling; the
next write into the same folder does, so they neither pile up nor end up inside a DVC
output.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from invprop.errors import InvpropError


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# Temporary names carry the host as well as the pid: on a file system shared between
# machines (Slurm), a pid says whether its writer is alive only on the writer's machine.
HOST_TAG = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "host"
_STALE = re.compile(
    rf"^\.(?P<target>.+)\.(?P<kind>tmp|old)-{re.escape(HOST_TAG)}-(?P<pid>\d+)-[0-9a-f]{{8}}$"
)


def _temp_sibling(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{kind}-{HOST_TAG}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def remove_stale_temps(folder: str | Path) -> None:
    """Delete the temporary files and folders that dead writers on this machine left in
    `folder`. Those of live processes and of other machines stay. A superseded `old`
    folder stays too when nothing replaced it (killed between atomic_dir's two renames):
    it is then the only complete copy."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        match = _STALE.match(entry.name)
        if match is None or _alive(int(match["pid"])):
            continue
        if match["kind"] == "old" and not (folder / match["target"]).exists():
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _finish(file: Path) -> None:
    """Flush `file` to disk with the permissions of any file its user creates (0o666 less
    the umask): some writers (safetensors) create theirs 0o600, which the other users of a
    shared cluster folder could not read."""
    umask = os.umask(0)
    os.umask(umask)
    with open(file, "rb+") as handle:
        os.fchmod(handle.fileno(), 0o666 & ~umask)
        os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    tmp = _temp_sibling(path, "tmp")
    try:
        yield tmp
        _finish(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; on success it replaces `path`.

    The previous folder is moved aside first and deleted only after the new one is in
    place; on failure the temporary folder is removed and the previous one is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    tmp = _temp_sibling(path, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        for file in tmp.rglob("*"):
            if file.is_file():
                _finish(file)
        replace_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(source: str | Path, path: str | Path) -> None:
    """Move the complete folder `source` to `path` on the same file system, replacing what
    is there: the previous folder is moved aside first and deleted only after the new one
    is in place, so `path` holds the old folder or the new one, never a mix."""
    source, path = Path(source), Path(path)
    old = _temp_sibling(path, "old")
    if path.exists():
        os.replace(path, old)
    os.replace(source, path)
    _fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)


def check_output_file(out: Path, force: bool, inputs: tuple[Path, ...] = ()) -> None:
    """Refuse, before any work, to write `out` over one of the command's `inputs`, over a
    folder, or over an existing file unless `force`: a command's output never silently
    replaces a good file."""
    for source in inputs:
        if out.resolve() == source.resolve():
            raise InvpropError(f"--out {out} would overwrite the input {source}; name another file")
    if out.is_dir():
        raise InvpropError(f"--out {out} is a folder; name the file to write")
    if out.exists() and not force:
        raise InvpropError(f"{out} exists; pass --force to overwrite it")


def write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented, key-sorted JSON, atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path, what: str = "file") -> Any:
    """Read a JSON file, turning a missing or corrupt file into a clear error."""
    path = Path(path)
    if not path.is_file():
        raise InvpropError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InvpropError(f"{what} {path} is not valid JSON ({exc}); rerun its stage") from exc


def load_npz(path: str | Path, what: str = "artifact") -> dict[str, np.ndarray]:
    """Load every array of an .npz file eagerly, refusing pickled object arrays."""
    path = Path(path)
    if not path.is_file():
        raise InvpropError(f"{what} not found: {path}; run the stage that writes it")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (ValueError, OSError, EOFError) as exc:
        raise InvpropError(f"{what} {path} is unreadable ({exc}); rerun its stage") from exc


def ensure_free_space(folder: str | Path, needed_bytes: int, what: str) -> None:
    """Fail before writing `what` if the disk holding `folder` has too little room."""
    folder = Path(folder)
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    # A margin so the rename dance and logs still fit.
    if free < needed_bytes * 1.1 + 16 * 2**20:
        raise InvpropError(
            f"not enough disk space for {what} in {folder}: need about "
            f"{needed_bytes / 2**20:.0f} MiB, {free / 2**20:.0f} MiB free; free some space "
            "(e.g. `dvc gc`) or point the artifact elsewhere"
        )


def save_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Like np.savez (uncompressed, loadable with np.load) but byte-for-byte reproducible:
    members in sorted order with a fixed timestamp, so equal arrays give an equal file and
    DVC sees no change."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, np.asanyarray(arrays[key]), allow_pickle=False)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file, to tie a derived artifact to the input it came from."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
