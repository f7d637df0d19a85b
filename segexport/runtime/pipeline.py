"""What `segexport run` does: a `Segmenter` over an image, a folder, a video or a camera, into files.

Outputs appear whole or not at all: image masks are written into a hidden staging
directory that is renamed into place at the end, videos into a temp file that is renamed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segexport.errors import DamagedInputError, SegexportError
from segexport.runtime.media import (
    IMAGE_SUFFIXES,
    VIDEO_FORMATS,
    FrameSource,
    VideoWriter,
    list_images,
    open_camera,
    open_video,
    save_mask_png,
    save_rgb,
)
from segexport.runtime.outputs import check_output, staged_output, write_output_file
from segexport.runtime.preprocessing import read_rgb
from segexport.runtime.segmenter import Segmenter
from segexport.runtime.stream import StageTimes, StreamItem

# done, total (None: unknown), frames per second so far
Progress = Callable[[int, "int | None", float], None]


@dataclass(frozen=True)
class RunSummary:
    input: str
    kind: str  # image, folder, video or camera
    output: str
    frames: int
    seconds: float
    backend: str
    precision: str
    description: str
    lost_frames: int = 0  # video frames that did not decode (only with allow_damaged)
    # Milliseconds per frame of each stage (decode, pre, infer, post, encode): the stages overlap
    # in threads, so end-to-end runs at the slowest one, not at their sum.
    stages_ms: dict[str, float] = field(default_factory=dict)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def inference_fps(self) -> float:
        """Frames per second of the inference stage alone, as it ran inside the pipeline."""
        infer = self.stages_ms.get("infer", 0.0)
        return 1000 / infer if infer > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fps": round(self.fps, 2), "inference_fps": round(self.inference_fps, 2)}

    def stages_line(self) -> str:
        """The per-stage figures for the closing message."""
        stages = ", ".join(f"{stage} {ms:.1f}" for stage, ms in self.stages_ms.items())
        return (
            f"per frame (ms): {stages}; end-to-end {self.fps:.1f} fps, "
            f"inference alone {self.inference_fps:.1f} fps"
        )


def input_kind(source: str) -> str:
    """image, folder, video or camera (a bare number of ASCII digits is a camera index)."""
    if source.isascii() and source.isdigit():
        return "camera"
    path = Path(source)
    if path.is_dir():
        return "folder"
    if not path.exists():
        raise SegexportError(f"{source}: no such file, folder or camera index")
    if not path.is_file():
        raise SegexportError(f"{source}: not a regular file (a FIFO, device or socket); refusing to read it")
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_FORMATS:
        return "video"
    raise SegexportError(
        f"{source}: not an image ({', '.join(IMAGE_SUFFIXES)}) or video ({', '.join(VIDEO_FORMATS)})"
    )


class _Clock:
    def __init__(self, total: int | None, progress: Progress | None) -> None:
        self.total, self.progress, self.done, self.lost = total, progress, 0, 0
        self.started = time.perf_counter()
        self.stages = StageTimes()  # the stream's, once it runs

    def encoded(self, started: float) -> None:
        """The consumer's stage: writing one frame's outputs, since `started`."""
        self.stages.add("encode", time.perf_counter() - started)

    def tick(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total, self.done / max(self.elapsed, 1e-9))

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def check_run_output(source: str, output: Path, force: bool, artifacts: Path | None = None) -> str:
    """The output policy for `run` (before the model loads): returns the input's kind."""
    kind = input_kind(source)
    reads = [artifacts, None if kind == "camera" else Path(source)]
    check_output(output, force, directory=kind in ("image", "folder"), reads=reads)
    return kind


def run_media(
    segmenter: Segmenter,
    source: str,
    output: Path,
    overlay: bool = False,
    force: bool = False,
    batch: int = 1,
    color: str | None = None,
    progress: Progress | None = None,
    alpha: float = 0.5,
    artifacts: Path | None = None,
    allow_damaged: bool = False,
) -> RunSummary:
    """Segment `source` into `output`: a folder of palette PNG masks (and overlays) for images,
    a colourised mask video or an overlay video for videos and cameras. `artifacts`, the
    directory the segmenter came from, is protected like the input. A video that loses frames
    (decode errors, fewer frames than its container promised) is refused with
    DamagedInputError unless `allow_damaged`; the count is in the summary either way."""
    kind = check_run_output(source, output, force, artifacts)
    reads = [artifacts, None if kind == "camera" else Path(source)]
    if kind in ("image", "folder"):
        paths = [Path(source)] if kind == "image" else list_images(Path(source))
        clock = _write_images(segmenter, paths, output, overlay, force, batch, progress, alpha, reads)
    else:
        clock = _write_video(
            segmenter,
            source,
            kind,
            output,
            overlay,
            force,
            batch,
            color,
            progress,
            alpha,
            reads,
            allow_damaged,
        )
    return RunSummary(
        source,
        kind,
        str(output),
        clock.done,
        round(clock.elapsed, 3),
        segmenter.backend,
        segmenter.precision,
        segmenter.describe(),
        clock.lost,
        clock.stages.per_frame_ms(),
    )


def _write_images(
    segmenter: Segmenter,
    paths: list[Path],
    output: Path,
    overlay: bool,
    force: bool,
    batch: int,
    progress: Progress | None,
    alpha: float,
    reads: list[Path | None],
) -> _Clock:
    names = [f"{path.stem}.png" for path in paths]
    clashes = sorted({name for name in names if names.count(name) > 1})
    if clashes:
        raise SegexportError(f"images share a name and would write the same mask: {', '.join(clashes[:5])}")
    clock = _Clock(len(paths), progress)
    with staged_output(output, force, "run", reads) as staging:
        (staging / "masks").mkdir()
        if overlay:
            (staging / "overlays").mkdir()
        with segmenter.stream((read_rgb(path) for path in paths), batch=batch, color="rgb") as stream:
            clock.stages = stream.times
            for item in stream:
                started = time.perf_counter()
                save_mask_png(item.mask, staging / "masks" / names[item.number], segmenter.palette)
                if overlay:
                    save_rgb(item.mask.overlay(item.frame, alpha), staging / "overlays" / names[item.number])
                clock.encoded(started)
                clock.tick()
    return clock


def _write_video(
    segmenter: Segmenter,
    source: str,
    kind: str,
    output: Path,
    overlay: bool,
    force: bool,
    batch: int,
    color: str | None,
    progress: Progress | None,
    alpha: float,
    reads: list[Path | None],
    allow_damaged: bool = False,
) -> _Clock:
    container_format = VIDEO_FORMATS.get(output.suffix.lower())
    if container_format is None:
        raise SegexportError(f"{output}: a video output needs one of the suffixes {', '.join(VIDEO_FORMATS)}")
    if not output.parent.is_dir():
        raise SegexportError(f"{output.parent}: no such folder for the output")
    frames: FrameSource = open_camera(int(source), color) if kind == "camera" else open_video(Path(source))
    order = frames.color  # decoders know their order; `color` overrides a camera's only
    clock = _Clock(frames.count, progress)

    def picture(item: StreamItem) -> np.ndarray:
        if not overlay:
            return item.mask.colorize()
        rgb = item.frame[..., ::-1] if order == "bgr" else item.frame
        return item.mask.overlay(rgb, alpha)

    def write(temp: Path) -> None:
        writer = VideoWriter(temp, frames.fps, container_format)
        try:
            with segmenter.stream(frames.frames, batch=batch, color=order) as stream:
                clock.stages = stream.times
                for item in stream:
                    started = time.perf_counter()
                    writer.write(picture(item))
                    clock.encoded(started)
                    clock.tick()
        except KeyboardInterrupt:
            if kind != "camera":
                raise  # a camera runs until stopped; a file stopped half-way is not an output
        finally:
            writer.close()
        if clock.done == 0:
            raise SegexportError(f"{source}: no frames could be read")
        clock.lost = frames.damage.lost(frames.count, clock.done) if kind == "video" else 0
        if clock.lost and not allow_damaged:
            raise DamagedInputError(
                f"{source}: damaged video, {clock.lost} frame(s) lost "
                f"({_damage_detail(frames, clock.done)}); "
                "no output written (pass --allow-damaged to keep the frames that decoded)"
            )

    write_output_file(output, write, force, reads)
    return clock


def _damage_detail(frames: FrameSource, decoded: int) -> str:
    parts = [f"{decoded} decoded" + (f" of {frames.count} the container lists" if frames.count else "")]
    if frames.damage.decode_errors:
        parts.append(f"{frames.damage.decode_errors} packet(s) failed to decode")
    if frames.damage.stopped:
        parts.append(f"decoding stopped: {frames.damage.stopped}")
    return ", ".join(parts)
