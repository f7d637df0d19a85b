"""What `segexport run` does: a `Segmenter` over an image, a folder, a video or a camera, into files.

`outputs.plan_run` decides (before the model loads) what is written; this module writes it.
Every output is for a pipeline as well as for eyes: masks are PNG label maps (exact class
ids), video frames' ids go to numbered PNGs or a lossless FFV1 video (`--save-ids`), and
`classes.json` + `legend.png` map ids to names and colours.

Outputs appear whole or not at all: folders are written into a hidden staging directory
that is renamed into place at the end, files into a temp file that is renamed.
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
    VIDEO_FORMATS,
    FrameSource,
    IdsVideoWriter,
    VideoWriter,
    list_images,
    open_camera,
    open_video,
    save_mask_png,
    save_rgb,
    write_legend,
)
from segexport.runtime.outputs import staged_output, write_output_file
from segexport.runtime.preprocessing import read_rgb
from segexport.runtime.run_outputs import RunPlan, input_kind, plan_run
from segexport.runtime.segmenter import Segmenter
from segexport.runtime.stream import StageTimes, StreamItem

__all__ = ["RunPlan", "RunSummary", "input_kind", "plan_run", "run_media"]

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


def run_media(
    segmenter: Segmenter,
    plan: RunPlan,
    batch: int = 1,
    color: str | None = None,
    progress: Progress | None = None,
    alpha: float = 0.5,
    allow_damaged: bool = False,
) -> RunSummary:
    """Segment the plan's input into its outputs (see `run_outputs.plan_run`, which has already
    applied the output policy). A video that loses frames (decode errors, fewer frames than its
    container promised) is refused with DamagedInputError unless `allow_damaged`; the count is
    in the summary either way."""
    if plan.kind in ("image", "folder"):
        paths = [Path(plan.source)] if plan.kind == "image" else list_images(Path(plan.source))
        clock = _write_images(segmenter, paths, plan, batch, progress, alpha)
    else:
        clock = _write_video(segmenter, plan, batch, color, progress, alpha, allow_damaged)
    return RunSummary(
        plan.source,
        plan.kind,
        str(plan.output),
        clock.done,
        round(clock.elapsed, 3),
        segmenter.backend,
        segmenter.precision,
        segmenter.describe(),
        clock.lost,
        clock.stages.per_frame_ms(),
    )


def class_names(segmenter: Segmenter) -> list[str]:
    """The artifact's class names, or class_0.. when it records none."""
    names = list(segmenter.class_names)
    return names if names else [f"class_{index}" for index in range(max(1, segmenter.num_classes))]


def _legend(segmenter: Segmenter, folder: Path, stem: str) -> None:
    write_legend(folder, stem, class_names(segmenter), segmenter.palette)


def _write_images(
    segmenter: Segmenter,
    paths: list[Path],
    plan: RunPlan,
    batch: int,
    progress: Progress | None,
    alpha: float,
) -> _Clock:
    names = [f"{path.stem}.png" for path in paths]
    clashes = sorted({name for name in names if names.count(name) > 1})
    if clashes:
        raise SegexportError(f"images share a name and would write the same mask: {', '.join(clashes[:5])}")
    clock = _Clock(len(paths), progress)
    if plan.target == "file":  # one image into the named .png
        mask = segmenter(paths[0])
        write_output_file(
            plan.output, lambda temp: save_mask_png(mask, temp, segmenter.palette), plan.force, plan.reads
        )
        _legend(segmenter, plan.legend_folder, plan.legend_stem)
        clock.tick()
        return clock
    with staged_output(plan.output, plan.force, "run", plan.reads) as staging:
        (staging / "masks").mkdir()
        if plan.overlay:
            (staging / "overlays").mkdir()
        _legend(segmenter, staging, "")
        with segmenter.stream((read_rgb(path) for path in paths), batch=batch, color="rgb") as stream:
            clock.stages = stream.times
            for item in stream:
                started = time.perf_counter()
                save_mask_png(item.mask, staging / "masks" / names[item.number], segmenter.palette)
                if plan.overlay:
                    save_rgb(item.mask.overlay(item.frame, alpha), staging / "overlays" / names[item.number])
                clock.encoded(started)
                clock.tick()
    return clock


class _IdsSink:
    """Where a video's exact class ids go: numbered PNG label maps, or an FFV1 video."""

    def __init__(self, segmenter: Segmenter, plan: RunPlan, fps: float) -> None:
        self._segmenter, self._plan, self._fps = segmenter, plan, fps
        self._video: IdsVideoWriter | None = None
        self._folder: Path | None = None

    def write_into(self, place: Path) -> None:
        """Start writing into `place` (a staging folder or a temp file)."""
        if self._plan.ids_format == "ffv1":
            self._video = IdsVideoWriter(place, self._fps, self._segmenter.num_classes)
        else:
            self._folder = place
            _legend(self._segmenter, place, "")

    def write(self, number: int, mask: np.ndarray) -> None:
        if self._video is not None:
            self._video.write(mask)
        elif self._folder is not None:
            save_mask_png(mask, self._folder / f"frame_{number:06d}.png", self._segmenter.palette)

    def close(self) -> None:
        if self._video is not None:
            self._video.close()


def _write_video(
    segmenter: Segmenter,
    plan: RunPlan,
    batch: int,
    color: str | None,
    progress: Progress | None,
    alpha: float,
    allow_damaged: bool = False,
) -> _Clock:
    container_format = VIDEO_FORMATS[plan.output.suffix.lower()]
    kind, source = plan.kind, plan.source
    frames: FrameSource = open_camera(int(source), color) if kind == "camera" else open_video(Path(source))
    order = frames.color  # decoders know their order; `color` overrides a camera's only
    clock = _Clock(frames.count, progress)
    ids = _IdsSink(segmenter, plan, frames.fps) if plan.ids is not None else None

    def picture(item: StreamItem) -> np.ndarray:
        if not plan.overlay:
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
                    if ids is not None:
                        ids.write(item.number, item.mask)
                    clock.tick()
        except KeyboardInterrupt:
            if kind != "camera":
                raise  # a camera runs until stopped; a file stopped half-way is not an output
        finally:
            writer.close()
            if ids is not None:
                ids.close()
        if clock.done == 0:
            raise SegexportError(f"{source}: no frames could be read")
        clock.lost = frames.damage.lost(frames.count, clock.done) if kind == "video" else 0
        if clock.lost and not allow_damaged:
            raise DamagedInputError(
                f"{source}: damaged video, {clock.lost} frame(s) lost "
                f"({_damage_detail(frames, clock.done)}); "
                "no output written (pass --allow-damaged to keep the frames that decoded)"
            )

    def write_ids_and_video(ids_place: Path) -> None:
        assert ids is not None
        ids.write_into(ids_place)
        write_output_file(plan.output, write, plan.force, plan.reads)

    if ids is None or plan.ids is None:
        write_output_file(plan.output, write, plan.force, plan.reads)
    elif plan.ids_format == "ffv1":  # the colour video is renamed into place first, then the ids
        write_output_file(plan.ids, write_ids_and_video, plan.force, plan.reads)
    else:
        with staged_output(plan.ids, plan.force, "run --save-ids", plan.reads) as staging:
            write_ids_and_video(staging)
    _legend(segmenter, plan.legend_folder, plan.legend_stem)
    return clock


def _damage_detail(frames: FrameSource, decoded: int) -> str:
    parts = [f"{decoded} decoded" + (f" of {frames.count} the container lists" if frames.count else "")]
    if frames.damage.decode_errors:
        parts.append(f"{frames.damage.decode_errors} packet(s) failed to decode")
    if frames.damage.stopped:
        parts.append(f"decoding stopped: {frames.damage.stopped}")
    return ", ".join(parts)
