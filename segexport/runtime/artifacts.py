"""Artifact directories: atomic creation, the manifest, and the checksums that vouch for files.

An artifact directory holds the exported files and `manifest.json`. Nothing reads a
model file the manifest's sha256 does not vouch for, and nothing is left half-written:
work happens in a hidden sibling directory (or temp file) that is renamed into place at
the end. What the manifest protects against, and what it does not, is in docs/threat-model.md
"Threat model": vouched names are plain files directly inside the directory (never a
symlink), a stage vouches only the files it wrote in this run and refuses to start when
a file it keeps fails its checksum, and a loader hashes the very bytes it loads.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path
from typing import Any

from segexport.errors import SegexportError
from segexport.runtime.onnx_wire import MalformedProtobuf, external_data_files
from segexport.runtime.schema import SCHEMA_VERSION, plain_name_problem, validate_manifest

__all__ = [
    "MANIFEST",
    "SCHEMA_VERSION",
    "atomic_write",
    "check_vouched_files",
    "check_writable_directory",
    "check_writable_target",
    "clean_stale_partials",
    "describe_files",
    "read_contained",
    "read_manifest",
    "record_files",
    "sha256_file",
    "staged_directory",
    "vouched_bytes",
    "vouched_path",
    "write_json_atomic",
]

MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 16 << 20
# Hidden work files: `.NAME.partial-PID-XXXX` (staged directories), `.NAME.old-PID-XXXX`
# (a replaced directory on its way out), `.NAME.tmp-PID-XXXX` (atomic writes). The pid
# tells a dead run's leftovers from a live run's work.
_WORK_FILE = re.compile(r"^\..+\.(?:partial|old|tmp)-(?P<pid>\d+)-[A-Za-z0-9_]+$")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _plain(directory: Path, name: str) -> Path:
    problem = plain_name_problem(name)
    if problem:
        raise SegexportError(f"{directory}: {name!r} {problem}; refusing it")
    return directory / name


def read_contained(directory: Path, name: str, size: int | None = None) -> bytes:
    """The bytes of a regular file directly inside `directory`, never through a symlink.

    The name must be plain and the file is opened with O_NOFOLLOW and checked on the open
    descriptor, so what is read is what was checked. With `size`, a file of another size is
    refused before it is read (a 100 GB file planted under a model's name costs nothing).
    """
    path = _plain(directory, name)
    try:
        # O_NONBLOCK: a FIFO planted under a model's name must not hang the open.
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise SegexportError(f"{path}: missing") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise SegexportError(f"{path}: is a symbolic link; artifacts hold plain files only") from None
        raise SegexportError(f"{path}: cannot read it ({error.strerror})") from None
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise SegexportError(f"{path}: not a regular file; artifacts hold plain files only")
        if size is not None and status.st_size != size:
            raise SegexportError(
                f"{path}: {status.st_size} bytes does not match the manifest's {size}; the file changed"
            )
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read()
    finally:
        os.close(fd)


def _entry(data: bytes) -> dict[str, Any]:
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _check_self_contained(path: Path, data: bytes) -> None:
    """Refuse an ONNX whose tensors live in other files: those would load unchecked."""
    if path.suffix != ".onnx":
        return
    try:
        external = external_data_files(data)
    except MalformedProtobuf:
        return  # not a protobuf: the loader refuses it with its own message
    if external:
        raise SegexportError(
            f"{path}: refers to external data ({', '.join(external[:3])}); segexport artifacts keep "
            "their weights inside the .onnx, refusing it"
        )


def vouched_bytes(directory: Path, name: str, manifest: dict[str, Any] | None = None) -> bytes:
    """The bytes of `directory/name`, only if the manifest lists it and their sha256 matches.

    Load these bytes (ONNX Runtime and TensorRT both take them) rather than reopening the
    path, so the file that was checked is the one that runs.
    """
    manifest = read_manifest(directory) if manifest is None else manifest
    path = _plain(directory, name)
    entry = manifest["files"].get(name)
    if entry is None:
        raise SegexportError(f"{path}: not listed in {MANIFEST}; refusing to load it")
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
        raise SegexportError(f"{path}: its {MANIFEST} entry is malformed; refusing to load it")
    size = entry.get("bytes")
    try:
        data = read_contained(directory, name, size if isinstance(size, int) else None)
    except SegexportError as error:
        raise SegexportError(f"{error} (listed in {MANIFEST}); refusing to load it") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != entry["sha256"]:
        raise SegexportError(
            f"{path}: sha256 {actual[:12]}... does not match the manifest's "
            f"{str(entry['sha256'])[:12]}...; the file changed after export, refusing to load it"
        )
    _check_self_contained(path, data)
    return data


def vouched_path(directory: Path, name: str, manifest: dict[str, Any] | None = None) -> Path:
    """`directory/name` after `vouched_bytes` accepts it: for checks before work starts.

    A loader should take `vouched_bytes` instead: a path can be swapped after the check.
    """
    vouched_bytes(directory, name, manifest)
    return directory / name


def describe_files(directory: Path, names: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """sha256 and size of `names` (default: every regular file but the manifest) in `directory`.

    Stages pass the names they wrote (`record_files`); the default is for a directory this
    process staged from empty.
    """
    if names is None:
        names = [
            p.name
            for p in sorted(directory.iterdir())
            if p.name != MANIFEST and not p.is_symlink() and p.is_file()
        ]
    described = {}
    for name in names:
        data = read_contained(directory, name)
        _check_self_contained(directory / name, data)
        described[name] = _entry(data)
    return described


def begin_stage(directory: Path, manifest: dict[str, Any], writes: Collection[str], why: str) -> None:
    """What a stage that adds files to an existing artifact checks before any work: the
    directory takes new files (`why` says what goes there), killed runs' leftovers are
    gone, and every vouched file it will not rewrite still matches its checksum."""
    check_writable_directory(directory, why)
    clean_stale_partials(directory)
    check_vouched_files(directory, manifest, rewriting=writes)


def check_vouched_files(directory: Path, manifest: dict[str, Any], rewriting: Collection[str] = ()) -> None:
    """Refuse to start a stage when a file the manifest vouches for (and the stage will not
    rewrite) fails its checksum: the stage would otherwise carry the tampered file forward."""
    failed = []
    for name in sorted(set(manifest["files"]) - set(rewriting)):
        try:
            vouched_bytes(directory, name, manifest)
        except SegexportError as error:
            failed.append((name, str(error)))
    if failed:
        names = ", ".join(name for name, _ in failed)
        raise SegexportError(
            f"{directory}: {len(failed)} vouched file(s) changed or are missing ({names}); refusing to "
            f"update the manifest. First: {failed[0][1]}. Restore them or re-export the artifact"
        )


def record_files(directory: Path, manifest: dict[str, Any], written: Iterable[str]) -> dict[str, Any]:
    """Vouch for exactly the files this run wrote, keep the earlier entries (re-checked now),
    and write the manifest atomically. Unlisted files stay unlisted whatever their name."""
    written = list(written)
    check_vouched_files(directory, manifest, rewriting=written)
    manifest["files"] = {**manifest["files"], **describe_files(directory, written)}
    write_json_atomic(directory / MANIFEST, manifest)
    return manifest


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _work_prefix(name: str, kind: str) -> str:
    return f".{name}.{kind}-{os.getpid()}-"


def atomic_write(path: Path, write: Callable[[Path], object], force: bool = True) -> None:
    """Call `write(temp)` on a temp file beside `path`, then rename it over `path`.

    Readers never see a half-written file; without `force` an existing file is kept. The
    rename replaces a symlink at `path` instead of writing through it.
    """
    if os.path.lexists(path) and not force:
        raise SegexportError(f"{path} already exists; pass --force to replace it")
    if path.is_dir() and not path.is_symlink():
        raise SegexportError(f"{path} is a directory; refusing to replace it with a file")
    try:
        fd, temp = tempfile.mkstemp(prefix=_work_prefix(path.name, "tmp"), dir=path.parent)
    except OSError as error:
        raise SegexportError(f"cannot write {path} ({error.strerror})") from None
    os.close(fd)
    try:
        write(Path(temp))
        os.chmod(temp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
        os.replace(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, lambda temp: temp.write_text(json.dumps(data, indent=2) + "\n"))


def read_manifest(directory: Path) -> dict[str, Any]:
    """The directory's manifest, schema-checked (one error naming a bad field)."""
    path = directory / MANIFEST
    if path.is_symlink():
        raise SegexportError(f"{path}: is a symbolic link; refusing it")
    if not directory.is_dir():
        raise SegexportError(
            f"{directory}: the artifact directory does not exist (make one with segexport onnx --out DIR)"
        )
    if not path.is_file():
        raise SegexportError(f"{directory}: no {MANIFEST}; is this a segexport artifact directory?")
    try:
        raw = read_contained(directory, MANIFEST)
        if len(raw) > MAX_MANIFEST_BYTES:
            raise SegexportError(f"{path}: {len(raw)} bytes; a manifest is a few KB, refusing it")
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise SegexportError(f"{path}: unreadable manifest ({error})") from error
    if not isinstance(data, dict) or "files" not in data:
        raise SegexportError(f"{path}: not a segexport manifest (no 'files' section)")
    return validate_manifest(data, path)


def check_writable_directory(directory: Path, why: str) -> None:
    """Fail before any work when `directory` (or, if it is still to be made, its nearest
    existing parent) cannot take new files."""
    while not os.path.lexists(directory) and directory.parent != directory:
        directory = directory.parent
    if not directory.is_dir() or not os.access(directory, os.W_OK | os.X_OK):
        raise SegexportError(f"cannot write to {directory} ({why}): permission denied or not a directory")


def _is_artifact(target: Path) -> bool:
    """Whether `target` holds a segexport manifest (a damaged one counts: re-exporting fixes it)."""
    try:
        data = json.loads(read_contained(target, MANIFEST))
    except (SegexportError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and "files" in data


def check_writable_target(
    target: Path,
    force: bool,
    artifacts_only: bool = False,
    replaceable: Callable[[Path], bool] | None = None,
) -> None:
    """Fail before any work if the directory could not be written, or `--force` would replace
    a symlink, a file or the current directory (or, with `artifacts_only`, anything but a
    segexport artifact directory; with `replaceable`, a directory it does not accept)."""
    target = Path(os.path.abspath(target))
    if target.parent == target:
        raise SegexportError(f"{target}: refusing to write an artifact over the filesystem root")
    if os.path.lexists(target):
        if not force:
            raise SegexportError(f"{target} already exists; pass --force to replace it")
        if target.is_symlink() or not target.is_dir():
            kind = "a symbolic link" if target.is_symlink() else "not a directory"
            raise SegexportError(f"{target} is {kind}; --force replaces only artifact directories")
        if artifacts_only and not _is_artifact(target):
            raise SegexportError(
                f"{target} holds no segexport manifest; --force replaces only artifact directories, "
                "refusing to delete it (choose another --out)"
            )
        if replaceable is not None and not replaceable(target):
            raise SegexportError(f"{target} was not written by segexport; refusing to replace it")
        if Path.cwd().resolve().is_relative_to(target.resolve()):
            raise SegexportError(f"{target} is (or holds) the current directory; refusing to replace it")
    parent = target.parent
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise SegexportError(f"cannot write to {parent}: permission denied or not a directory")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def clean_stale_partials(directory: Path) -> list[str]:
    """Remove the hidden work files and directories that killed runs left in `directory`;
    a live process's work is left alone. Returns the names removed."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            match = _WORK_FILE.match(entry.name)
            if not match or _alive(int(match["pid"])):
                continue
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                removed.append(entry.name)
    return removed


@contextlib.contextmanager
def staged_directory(
    target: Path,
    force: bool,
    artifacts_only: bool = False,
    replaceable: Callable[[Path], bool] | None = None,
) -> Iterator[Path]:
    """Yield an empty hidden directory that replaces `target` only if the block succeeds.

    Commands other than the export stages go through `segexport.runtime.outputs`, which
    adds the rules about inputs and markers."""
    check_writable_target(target, force, artifacts_only, replaceable)
    target = Path(os.path.abspath(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_partials(target.parent)
    staging = Path(tempfile.mkdtemp(prefix=_work_prefix(target.name, "partial"), dir=target.parent))
    try:
        yield staging
        staging.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; give the usual directory mode
        if os.path.lexists(target):
            check_writable_target(
                target, force, artifacts_only, replaceable
            )  # still replaceable, right before it goes
            retired = Path(tempfile.mkdtemp(prefix=_work_prefix(target.name, "old"), dir=target.parent))
            try:
                os.replace(target, retired / target.name)
                try:
                    os.replace(staging, target)
                except OSError:
                    os.replace(retired / target.name, target)  # put the old artifact back
                    raise
            finally:
                shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
