"""Artifact directories: atomic creation, the manifest, and the checksums that vouch for files.

An artifact directory holds the exported files and `manifest.json`. Nothing reads a
model file the manifest's sha256 does not vouch for, and nothing is left half-written:
work happens in a hidden sibling directory that is renamed into place at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from segexport.errors import SegexportError

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def describe_files(directory: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file in the directory except the manifest itself."""
    return {
        path.name: {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        for path in sorted(directory.iterdir())
        if path.is_file() and path.name != MANIFEST
    }


def atomic_write(path: Path, write: Callable[[Path], object], force: bool = True) -> None:
    """Call `write(temp)` on a temp file beside `path`, then rename it over `path`.

    Readers never see a half-written file; without `force` an existing file is kept.
    """
    if path.exists() and not force:
        raise SegexportError(f"{path} already exists; pass --force to replace it")
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(temp))
        os.chmod(temp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
        os.replace(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, lambda temp: temp.write_text(json.dumps(data, indent=2) + "\n"))


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not path.is_file():
        raise SegexportError(f"{directory}: no {MANIFEST}; is this a segexport artifact directory?")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SegexportError(f"{path}: unreadable manifest ({error})") from error
    if not isinstance(data, dict) or "files" not in data:
        raise SegexportError(f"{path}: not a segexport manifest (no 'files' section)")
    return data


def vouched_path(directory: Path, name: str, manifest: dict[str, Any] | None = None) -> Path:
    """Return `directory/name` only if the manifest lists it and its sha256 matches."""
    manifest = read_manifest(directory) if manifest is None else manifest
    entry = manifest["files"].get(name)
    if entry is None:
        raise SegexportError(f"{directory / name}: not listed in {MANIFEST}; refusing to load it")
    path = directory / name
    if not path.is_file():
        raise SegexportError(f"{path}: listed in {MANIFEST} but missing")
    actual = sha256_file(path)
    if actual != entry["sha256"]:
        raise SegexportError(
            f"{path}: sha256 {actual[:12]}... does not match the manifest's "
            f"{entry['sha256'][:12]}...; the file changed after export, refusing to load it"
        )
    return path


def check_writable_target(target: Path, force: bool) -> None:
    """Fail before any work if the artifact could not be written."""
    if target.exists() and not force:
        raise SegexportError(f"{target} already exists; pass --force to replace it")
    if target.exists() and not target.is_dir():
        raise SegexportError(f"{target} exists and is not a directory")
    parent = target.parent
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise SegexportError(f"cannot write to {parent}: permission denied or not a directory")


@contextlib.contextmanager
def staged_directory(target: Path, force: bool) -> Iterator[Path]:
    """Yield an empty hidden directory that replaces `target` only if the block succeeds."""
    check_writable_target(target, force)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield staging
        staging.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; give the usual directory mode
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, retired / target.name)
            os.replace(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
