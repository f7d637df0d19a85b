"""The one output policy of every command that writes: nothing a user owns is ever lost.

Every output (run's masks and videos, triton's model directories, bench and verify
reports and plots, train's checkpoint) is checked here before any work, then written to a
hidden sibling that is renamed into place (`staged_directory`, `atomic_write`). The rules,
as docs/threat-model.md states them:

- an existing output is replaced only with `--force`, and never a symbolic link;
- a directory is replaced only when it carries a segexport marker: `segexport-output.json`
  (written into every output directory) or, for artifacts, `manifest.json`; a folder
  without one is the user's, whatever it holds;
- a file output replaces only a regular file, never a directory, FIFO or device;
- no output is, holds, or lies inside something the command reads (its inputs, the
  artifact it runs), and none is or holds the current directory or the filesystem root.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from segexport.errors import SegexportError
from segexport.runtime.artifacts import (
    MANIFEST,
    atomic_write,
    check_writable_directory,
    read_contained,
    staged_directory,
)

__all__ = ["MARKER", "artifact_files", "check_output", "is_marked", "staged_output", "write_output_file"]

MARKER = "segexport-output.json"
_MAX_MARKER_BYTES = 64 << 10


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(path))


def _resolved(path: Path) -> Path:
    """`path` with its parents' symlinks resolved but not the last component's own link."""
    absolute = _absolute(path)
    return absolute.parent.resolve() / absolute.name if absolute.parent != absolute else absolute


def _overlap(output: Path, read: Path) -> str | None:
    """How `output` overlaps `read` (is, holds, lies inside), or None."""
    candidates = {_resolved(output), _absolute(output)}
    with contextlib.suppress(OSError, RuntimeError):
        candidates.add(output.resolve())
    reads = {_resolved(read), _absolute(read)}
    with contextlib.suppress(OSError, RuntimeError):
        reads.add(read.resolve())
    for mine in candidates:
        for theirs in reads:
            if mine == theirs:
                return "is"
            if mine in theirs.parents:
                return "holds"
            if theirs in mine.parents:
                return "lies inside"
    return None


def is_marked(directory: Path) -> bool:
    """Whether `directory` is one this tool wrote: a plain marker (or manifest) JSON object inside."""
    for name, key in ((MARKER, "command"), (MANIFEST, "files")):
        try:
            raw = read_contained(directory, name)
        except SegexportError:
            continue
        if len(raw) > _MAX_MARKER_BYTES and name == MARKER:
            continue
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            continue
        if isinstance(data, dict) and key in data:
            return True
    return False


def check_output(
    target: Path,
    force: bool,
    *,
    directory: bool,
    reads: Iterable[Path | None] = (),
    option: str = "--output",
    owned: Callable[[Path], bool] | None = None,
) -> Path:
    """Refuse, before any work, an output that would lose something the user owns; return it absolute.

    `reads` are the paths the command reads (inputs, the artifact): the output may not be,
    hold or lie inside any of them. `directory` says whether the output is a folder (replaced
    only when marked as ours) or a file (replaced only when a regular file, and with `owned`,
    only when `owned(file)` recognises it as one this tool wrote).
    """
    absolute = _absolute(target)
    if absolute.parent == absolute:
        raise SegexportError(f"{option} {target}: refusing to write over the filesystem root")
    for read in reads:
        if read is None:
            continue
        how = _overlap(absolute, Path(read))
        if how is not None:
            raise SegexportError(
                f"{option} {target} {how} {read}, which this command reads; choose another {option}"
            )
    if _overlap(absolute, Path.cwd()) in ("is", "holds"):
        raise SegexportError(f"{option} {target} is (or holds) the current directory; refusing it")
    if os.path.lexists(absolute):
        if not force:
            raise SegexportError(f"{target} already exists; pass --force to replace it")
        mode = os.lstat(absolute).st_mode
        if stat.S_ISLNK(mode):
            raise SegexportError(f"{target} is a symbolic link; --force never replaces one")
        if directory and not stat.S_ISDIR(mode):
            raise SegexportError(f"{target} exists and is not a directory; refusing to replace it")
        if directory and not is_marked(absolute):
            raise SegexportError(
                f"{target} holds no {MARKER} (or {MANIFEST}): segexport did not write it; --force "
                "replaces only segexport outputs, refusing to delete it (choose another "
                f"{option})"
            )
        if not directory and not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
            raise SegexportError(f"{target} is {kind}; --force replaces only a file, refusing it")
        if not directory and owned is not None and not owned(absolute):
            raise SegexportError(
                f"{target} was not written by segexport; --force replaces only segexport outputs, "
                f"refusing to replace it (choose another {option})"
            )
    check_writable_directory(absolute.parent, f"{option} is written there")
    return absolute


def artifact_files(directory: Path | None) -> list[Path]:
    """An artifact's manifest and the files it lists: a report may go beside them, never over them."""
    if directory is None:
        return []
    files = [directory / MANIFEST]
    try:
        data = json.loads(read_contained(directory, MANIFEST))
    except (SegexportError, ValueError, RecursionError):
        return files
    listed = data.get("files") if isinstance(data, dict) else None
    if isinstance(listed, dict):
        files += [directory / str(name) for name in listed]
    return files


def _marker_text(command: str) -> str:
    from segexport import __version__

    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return (
        json.dumps({"tool": "segexport", "version": __version__, "command": command, "written": now}) + "\n"
    )


@contextlib.contextmanager
def staged_output(
    target: Path, force: bool, command: str, reads: Iterable[Path | None] = (), option: str = "--output"
) -> Iterator[Path]:
    """An empty hidden directory that replaces `target` (checked by `check_output`) if the
    block succeeds, with the marker that lets a later `--force` replace it."""
    reads = list(reads)
    check_output(target, force, directory=True, reads=reads, option=option)
    with staged_directory(target, force, replaceable=is_marked) as staging:
        yield staging
        (staging / MARKER).write_text(_marker_text(command))


def write_output_file(
    target: Path,
    write: Callable[[Path], object],
    force: bool,
    reads: Iterable[Path | None] = (),
    option: str = "--output",
) -> None:
    """`write(temp)` then rename over `target`, after `check_output` accepts it as a file."""
    check_output(target, force, directory=False, reads=reads, option=option)
    atomic_write(target, write, force=force)
