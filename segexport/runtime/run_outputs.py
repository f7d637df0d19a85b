"""What `segexport run` will write, decided and checked before the model loads.

The output path's suffix decides what is written: a `.png` file for one image, a folder
(no suffix) for images, a video file (`.mp4`, `.mkv`, ...) for videos and cameras. A path
that does not fit the input, an existing output without `--force`, a missing input or a
missing video extra is refused here, in milliseconds, instead of after the model loaded.
`plan_run` is the one place these rules live; `pipeline.run_media` writes what it plans.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from segexport.errors import SegexportError, UnavailableError
from segexport.runtime.media import IMAGE_SUFFIXES, VIDEO_EXTRA, VIDEO_FORMATS
from segexport.runtime.outputs import check_output

# `--save-ids` without a value: a folder of numbered PNG label maps beside the video output.
IDS_BESIDE = ""
LOSSLESS_SUFFIX = ".mkv"


@dataclass(frozen=True)
class RunPlan:
    """The input's kind and every path `run` writes."""

    source: str
    kind: str  # image, folder, video or camera
    output: Path
    target: str  # file (one .png), folder, or video
    ids: Path | None = None  # video/camera: exact class ids, a folder of PNGs or an FFV1 .mkv
    overlay: bool = False
    force: bool = False
    # What the run reads (the input, the artifact): no output may be, hold or lie inside them.
    reads: tuple[Path, ...] = ()

    @property
    def ids_format(self) -> str | None:
        if self.ids is None:
            return None
        return "ffv1" if self.ids.suffix.lower() == LOSSLESS_SUFFIX else "png"

    @property
    def legend_stem(self) -> str:
        """Prefix of classes.json/legend.png: none inside a folder, `NAME.` beside a file."""
        return "" if self.target == "folder" else f"{self.output.stem}."

    @property
    def legend_folder(self) -> Path:
        return self.output if self.target == "folder" else self.output.parent

    def written(self) -> list[Path]:
        """Every path this run creates or replaces (what an output policy must vouch for)."""
        paths = [self.output]
        if self.target != "folder":
            paths += [self.legend_folder / f"{self.legend_stem}{name}" for name in LEGEND_FILES]
        if self.ids is not None:
            paths.append(self.ids)
        return paths


LEGEND_FILES = ("classes.json", "legend.png")


def input_kind(source: str) -> str:
    """image, folder, video or camera (a bare number of ASCII digits is a camera index)."""
    if source.isascii() and source.isdigit():
        return "camera"
    path = Path(source)
    if path.is_dir():
        return "folder"
    if not path.exists():
        raise SegexportError(f"--input {source}: no such file, folder or camera index")
    if not path.is_file():
        raise SegexportError(
            f"--input {source}: not a regular file (a FIFO, device or socket); refusing to read it"
        )
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_FORMATS:
        return "video"
    raise SegexportError(
        f"--input {source}: not an image ({', '.join(IMAGE_SUFFIXES)}) or video ({', '.join(VIDEO_FORMATS)})"
    )


def plan_run(
    source: str,
    output: Path,
    save_ids: str | None = None,
    overlay: bool = False,
    force: bool = False,
    artifacts: Path | None = None,
) -> RunPlan:
    """Check the input, the output's suffix against it, the video extra, and every output
    against the output policy (`outputs.check_output`: never an input or the artifact)."""
    kind = input_kind(source)
    reads = tuple(p for p in (artifacts, None if kind == "camera" else Path(source)) if p is not None)
    suffix = output.suffix.lower()
    if kind in ("video", "camera"):
        if importlib.util.find_spec("av") is None and importlib.util.find_spec("cv2") is None:
            raise UnavailableError(f"reading video needs PyAV; {VIDEO_EXTRA}")
        if suffix not in VIDEO_FORMATS:
            raise SegexportError(
                f"--output {output}: a {kind} is written as a video file ({', '.join(VIDEO_FORMATS)}); "
                "exact class ids go to --save-ids"
            )
        plan = RunPlan(source, kind, output, "video", _ids_path(output, save_ids), overlay, force, reads)
    elif suffix in VIDEO_FORMATS:
        raise SegexportError(
            f"--output {output}: a video file needs a video input; --input {source} is {_a(kind)} "
            f"(pass a {'folder' if kind == 'folder' else '.png file or a folder'})"
        )
    elif kind == "image" and suffix == ".png":
        if overlay:
            raise SegexportError(
                f"--output {output}: one file holds the mask; pass a folder to get masks and overlays"
            )
        plan = RunPlan(source, kind, output, "file", None, overlay, force, reads)
    elif suffix:
        what = "a .png file or a folder (no suffix)" if kind == "image" else "a folder (no suffix)"
        raise SegexportError(f"--output {output}: {_a(kind)} input writes {what}; masks are PNG label maps")
    else:
        plan = RunPlan(source, kind, output, "folder", None, overlay, force, reads)
    for path in plan.written():
        folder = (path == output and plan.target == "folder") or (path == plan.ids and not path.suffix)
        check_output(path, force, directory=folder, reads=reads)
    return plan


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _ids_path(output: Path, save_ids: str | None) -> Path | None:
    """`--save-ids` bare: `NAME-ids/` beside the video; a `.mkv`: FFV1; else that folder."""
    if save_ids is None:
        return None
    if save_ids == IDS_BESIDE:
        return output.with_name(f"{output.stem}-ids")
    path = Path(save_ids)
    if path.suffix and path.suffix.lower() != LOSSLESS_SUFFIX:
        raise SegexportError(
            f"--save-ids {save_ids}: a folder of PNG label maps (no suffix) or a lossless {LOSSLESS_SUFFIX} "
            "(FFV1); lossy video cannot carry class ids"
        )
    if path.suffix and importlib.util.find_spec("av") is None:
        raise UnavailableError(f"--save-ids {save_ids}: a lossless mask video needs PyAV; {VIDEO_EXTRA}")
    return path
