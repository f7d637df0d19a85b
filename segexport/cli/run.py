"""`segexport run`: segment images, folders, videos and cameras with an artifact (torch-free)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from segexport.cli._base import echo_json, main, progress
from segexport.cli.options import artifacts_option, force_option, json_option, threads_option
from segexport.runtime.backends import BACKEND_NAMES
from segexport.runtime.run_outputs import IDS_BESIDE


@main.command("run")
@artifacts_option("Artifact directory (from segexport onnx/quantize/trt).", required=True)
@click.option(
    "--input",
    "source",
    required=True,
    help="An image, a folder of images (pass the folder, not a shell glob), a video file or a camera index.",
)
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Its suffix decides: x.png (one image: its label map), a folder (images: masks/, overlays/), "
    "or a video file (.mp4, .mkv, ...; colours for eyes, lossy).",
)
@click.option(
    "--save-ids",
    is_flag=False,
    flag_value=IDS_BESIDE,
    default=None,
    metavar="[DIR|FILE.mkv]",
    help="Videos: also write exact class ids, as numbered PNG label maps in DIR [OUTPUT-ids/ beside "
    "the video] or a lossless FFV1 .mkv. Image masks are always label maps.",
)
@click.option("--overlay", is_flag=True, help="Also write overlays (images) / write an overlay video.")
@click.option("--tta", is_flag=True, help="Average over scales 0.75/1/1.25 and horizontal flips.")
@click.option("--crf", is_flag=True, help="Refine masks with a dense-CRF approximation (slow).")
@click.option(
    "--backend",
    type=click.Choice(["auto", *BACKEND_NAMES]),
    default="auto",
    show_default=True,
    help="Inference backend; auto: the best this machine runs.",
)
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "fp16", "int8"]),
    default="auto",
    show_default=True,
    help="Precision to run; auto: the best this machine runs.",
)
@click.option(
    "--resize",
    "resize_mode",
    type=click.Choice(["fixed", "keep-aspect", "native"]),
    help="fixed: stretch to the export size; keep-aspect: scale and pad; native: pad only "
    "[videos: keep-aspect unless the artifact takes one size; images: fixed].",
)
@click.option(
    "--batch", type=click.IntRange(min=1), default=1, show_default=True, help="Frames per inference."
)
@click.option(
    "--color",
    type=click.Choice(["rgb", "bgr"]),
    help="Colour order of camera frames [the camera library's].",
)
@click.option(
    "--allow-damaged",
    is_flag=True,
    help="Keep going when a video loses frames (warn, count them in --json) [off: exit 1, no output].",
)
@threads_option("CPU threads for ONNX Runtime.")
@click.option("--device", type=click.IntRange(min=0), default=0, show_default=True, help="GPU index.")
@force_option("Replace an existing output.")
@click.option("--verbose", is_flag=True, help="Print the whole backend table, not the one-line choice.")
@json_option("Print a JSON summary on stdout.")
def run(
    artifacts: Path,
    source: str,
    output: Path,
    save_ids: str | None,
    overlay: bool,
    tta: bool,
    crf: bool,
    backend: str,
    precision: str,
    resize_mode: str | None,
    batch: int,
    color: str | None,
    allow_damaged: bool,
    threads: int | None,
    device: int,
    force: bool,
    verbose: bool,
    as_json: bool,
) -> None:
    """Segment an image, a folder, a video or a camera with an artifact; masks at the input's size."""
    from segexport.runtime.artifacts import read_manifest
    from segexport.runtime.geometry import SizeRule
    from segexport.runtime.pipeline import plan_run, run_media
    from segexport.runtime.segmenter import TTA, Segmenter

    # Everything that can be refused is refused before the model loads.
    plan = plan_run(source, output, save_ids, overlay, force, artifacts)  # and the output policy
    manifest = read_manifest(artifacts)
    if resize_mode is None:
        video = plan.kind in ("video", "camera")
        resize_mode = "keep-aspect" if video and SizeRule.from_manifest(manifest).dynamic_size else "fixed"
    refine = "crf" if crf else None
    segmenter = Segmenter.load(
        artifacts,
        backend,
        precision,
        device,
        threads,
        resize=resize_mode,
        tta=TTA() if tta else None,
        refine=refine,
    )
    with segmenter:
        progress(segmenter.describe() if verbose else segmenter.summary())
        summary = run_media(
            segmenter, plan, batch, color, progress=_frame_progress, allow_damaged=allow_damaged
        )
    _report(summary, source, as_json)


def _report(summary: Any, source: str, as_json: bool) -> None:
    """The closing lines: a lost-frames warning, then the summary (or its JSON)."""
    click.echo("", err=True)
    if summary.lost_frames:
        click.echo(
            f"segexport: warning: {source}: {summary.lost_frames} frame(s) lost (damaged video)", err=True
        )
    if as_json:
        echo_json({"ok": True, **summary.to_dict()})
        return
    click.echo(
        f"{summary.frames} frames in {summary.seconds:.1f} s ({summary.fps:.1f} fps) on "
        f"{summary.backend} {summary.precision}; wrote {summary.output}"
    )
    if any(summary.stages_ms.values()):  # one image runs outside the stream: no stage clock
        click.echo(summary.stages_line())


def _frame_progress(done: int, total: int | None, fps: float) -> None:
    """A progress bar on a terminal; a line every 50 frames (and at the end) in logs."""
    tty = sys.stderr.isatty()
    if not (tty or done == total or done % 50 == 0):
        return
    if total:
        filled = 30 * done // total
        text = f"  [{'#' * filled}{'.' * (30 - filled)}] {done}/{total} frames, {fps:.1f} fps"
    else:
        text = f"  {done} frames, {fps:.1f} fps"
    click.echo(text + ("\r" if tty else "\n"), err=True, nl=False)
