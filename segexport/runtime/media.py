"""Images and videos in and out: palettes, colourised masks, overlays, frame sources and sinks.

Video goes through PyAV (the `video` extra: its wheels bundle FFmpeg with an H.264
encoder, no system packages). OpenCV is used only when it is already importable and
PyAV is not: a pip OpenCV on a Jetson would replace JetPack's GStreamer build, and pip's
`opencv-python-headless` writes only MPEG-4 Part 2 (`mp4v`). Both are imported lazily.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from segexport.errors import SegexportError, UnavailableError, first_line
from segexport.runtime.preprocessing import check_regular_file

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_FORMATS = {".mp4": "mp4", ".mkv": "matroska", ".mov": "mov", ".avi": "avi", ".webm": "webm"}
VIDEO_EXTRA = "install the video extra: pip install 'segexport[video]'"


def default_palette() -> np.ndarray:
    """256 class colours: the bits of the class index spread over the high bits of R, G and B,
    so that neighbouring classes differ strongly (0 is black; the PASCAL VOC scheme)."""
    colours = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        value, shift, rgb = index, 7, [0, 0, 0]
        while value:
            for channel in range(3):
                rgb[channel] |= ((value >> channel) & 1) << shift
            value >>= 3
            shift -= 1
        colours[index] = rgb
    return colours


def colorize(mask: np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
    """Class ids [H, W] -> RGB uint8 [H, W, 3] in the palette's colours."""
    colours = default_palette() if palette is None else np.asarray(palette, dtype=np.uint8)
    # take(mode="wrap") is `colours[ids % len(colours)]` without an int64 copy and a modulo pass
    # over the frame (9 -> 1.4 ms at 480x640: the encode stage of `segexport run` pays it per frame).
    return np.take(colours, np.asarray(mask), axis=0, mode="wrap")


def overlay(
    image: np.ndarray, mask: np.ndarray, alpha: float = 0.5, palette: np.ndarray | None = None
) -> np.ndarray:
    """The RGB image with the colourised mask blended over it (`alpha` = mask opacity).

    Classes whose palette colour is black (class 0, "background", in the default palette)
    leave the image as it is: blending black would only darken what is not labelled.
    """
    if not 0.0 <= alpha <= 1.0:
        raise SegexportError(f"overlay alpha must be in 0..1, not {alpha}")
    if image.shape[:2] != np.shape(mask):
        raise SegexportError(f"image {image.shape[:2]} and mask {np.shape(mask)} differ in size")
    rows = default_palette() if palette is None else np.asarray(palette, dtype=np.uint8)
    colours = colorize(mask, rows)
    # The weight per class, then per pixel (not a reduction over each pixel's three channels).
    class_weight = np.where(rows.any(axis=1), np.float32(alpha), np.float32(0.0))
    weight = np.take(class_weight, np.asarray(mask), mode="wrap")[..., None]
    blended = image.astype(np.float32) * (1 - weight) + colours.astype(np.float32) * weight
    return (blended + 0.5).astype(np.uint8)


def list_images(folder: Path, what: str = "images") -> list[Path]:
    """The image files of a folder, sorted; an error when there are none."""
    if not folder.is_dir():
        raise SegexportError(f"{what} folder {folder} does not exist or is not a directory")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir())
    for path in files:  # a FIFO or device under an image's name is refused, not opened (it would hang)
        check_regular_file(path, "image")
    if not files:
        raise SegexportError(f"{what} folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def save_mask_png(mask: np.ndarray, path: Path, palette: np.ndarray | None = None) -> None:
    """Class ids as a PNG label map that reads back exactly (`np.asarray(Image.open(path))`).

    Up to 256 classes: an 8-bit palette PNG (viewers show the colours); past 255 a 16-bit
    grayscale PNG (ids up to 65535, no colours).
    """
    from PIL import Image

    ids = np.asarray(mask)
    top = int(ids.max()) if ids.size else 0
    if top > 65535:
        raise SegexportError(f"{path}: a PNG label map holds class ids up to 65535, got {top}")
    if top > 255:
        Image.fromarray(ids.astype(np.uint16)).save(path, format="PNG")
        return
    picture = Image.fromarray(ids.astype(np.uint8), mode="P")
    colours = default_palette() if palette is None else np.asarray(palette, dtype=np.uint8)
    picture.putpalette(colours[:256].reshape(-1).tolist())
    picture.save(path, format="PNG")


def write_legend(folder: Path, stem: str, class_names: list[str], palette: np.ndarray) -> list[Path]:
    """`{stem}classes.json` (id, name, colour per class) and `{stem}legend.png` in `folder`.

    The JSON is what a pipeline reads to map ids to names; the PNG is for people.
    """
    import json

    from PIL import Image, ImageDraw

    colours = np.asarray(palette, dtype=np.uint8)
    rgb = [tuple(int(c) for c in colours[index % len(colours)]) for index in range(len(class_names))]
    classes = [
        {"id": index, "name": name, "color": list(rgb[index])} for index, name in enumerate(class_names)
    ]
    json_path, png_path = folder / f"{stem}classes.json", folder / f"{stem}legend.png"
    json_path.write_text(json.dumps({"classes": classes}, indent=2) + "\n")
    row = 20
    picture = Image.new("RGB", (260, row * max(1, len(classes)) + 8), "white")
    draw = ImageDraw.Draw(picture)
    for index, entry in enumerate(classes):
        top = 4 + row * index
        draw.rectangle((6, top, 6 + 28, top + row - 4), fill=rgb[index], outline="black")
        draw.text((42, top + 2), f"{entry['id']}: {entry['name']}", fill="black")
    picture.save(png_path, format="PNG")
    return [json_path, png_path]


def save_rgb(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(image).save(path, format="PNG")


# --------------------------------------------------------------------------- video


def video_library() -> str:
    """`av` when PyAV is installed, else `cv2` when OpenCV already is; else the install hint."""
    for name in ("av", "cv2"):
        if importlib.util.find_spec(name) is not None:
            return name
    raise UnavailableError(f"reading and writing video needs PyAV; {VIDEO_EXTRA}")


@dataclass
class Damage:
    """What a video read lost: packets that failed to decode, and whether it stopped early."""

    decode_errors: int = 0
    stopped: str | None = None  # the error that ended decoding, if one did
    slack: int = 0  # frames a promise may be off by: 1 when estimated from the duration

    def lost(self, promised: int | None, decoded: int) -> int:
        """Frames lost: the container's promise minus what came out (at least the errors)."""
        short = (promised - decoded) if promised else 0
        short = short if short > self.slack else 0
        return max(short, self.decode_errors, 1 if self.stopped else 0)


@dataclass
class FrameSource:
    """Frames of a video file or camera, in the colour order `color`, with what is known of them."""

    frames: Iterator[np.ndarray]
    color: str
    fps: float
    count: int | None
    size: tuple[int, int] | None = None  # (H, W) when known before decoding
    damage: Damage = field(default_factory=Damage)


def open_video(path: Path) -> FrameSource:
    """Open a video file now (so a bad one fails before any output exists); decode lazily."""
    check_regular_file(path, "video file")
    if video_library() == "av":
        import av

        try:
            container = av.open(str(path))
        except Exception as error:  # PyAV raises its own error types per FFmpeg error code
            raise SegexportError(f"{path}: cannot open the video ({first_line(error)})") from error
        if not container.streams.video:
            container.close()
            raise SegexportError(f"{path}: has no video stream")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 30)
        # The promise: the frame count the container lists, else its duration times the rate
        # (Matroska lists no count; an estimate may be off by one frame).
        count = int(stream.frames) or None
        damage = Damage()
        if count is None and container.duration and stream.average_rate:
            count = round(container.duration / 1_000_000 * fps) or None
            damage.slack = 1
        return FrameSource(
            _av_frames(container, stream, path, damage),
            "rgb",
            fps,
            count,
            (stream.height, stream.width),
            damage,
        )
    import cv2

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise SegexportError(f"{path}: cannot open the video")
    fps = float(capture.get(cv2.CAP_PROP_FPS)) or 30.0
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    return FrameSource(_cv2_frames(capture), "bgr", fps, count)


def _av_frames(container: Any, stream: Any, path: Path, damage: Damage | None = None) -> Iterator[np.ndarray]:
    """Decode packet by packet: a packet that fails to decode is counted in `damage` and
    skipped (the caller decides whether a damaged read is acceptable); an error of the
    container itself ends the read. Without `damage` (a camera) the first error ends it."""
    import av

    try:
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.FFmpegError:
                if damage is None:
                    raise
                damage.decode_errors += 1
                continue
            for frame in frames:
                yield frame.to_ndarray(format="rgb24")
    except Exception as error:
        if isinstance(error, SegexportError):
            raise
        if damage is None:
            raise SegexportError(f"{path}: the video stopped decoding ({first_line(error)})") from error
        damage.stopped = first_line(error)
    finally:
        container.close()


def _cv2_frames(capture: Any) -> Iterator[np.ndarray]:
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            yield frame
    finally:
        capture.release()


def open_camera(index: int, color: str | None = None) -> FrameSource:
    """A camera by index: OpenCV when importable (BGR frames), else PyAV's v4l2 input (RGB)."""
    if importlib.util.find_spec("cv2") is not None:
        import cv2

        capture = cv2.VideoCapture(index)
        if not capture.isOpened():
            raise SegexportError(f"camera {index}: cannot be opened")
        fps = float(capture.get(cv2.CAP_PROP_FPS)) or 30.0
        return FrameSource(_cv2_frames(capture), color or "bgr", fps, None)
    if importlib.util.find_spec("av") is None:
        raise UnavailableError(f"reading a camera needs PyAV or OpenCV; {VIDEO_EXTRA}")
    import av

    device = f"/dev/video{index}"
    try:
        container = av.open(device, format="v4l2")
    except Exception as error:
        raise SegexportError(f"camera {index} ({device}): cannot be opened ({first_line(error)})") from error
    stream = container.streams.video[0]
    return FrameSource(
        _av_frames(container, stream, Path(device)), color or "rgb", float(stream.average_rate or 30), None
    )


# x264's `veryfast` preset (OBS Studio's default for live encoding) instead of its `medium`: a
# 640x480 mask video took 13.5 -> 5.6 ms of CPU per frame for a 1.4 % larger file (60 frames of
# segformer-b0 masks: 269,547 -> 273,302 bytes), CPU the model's inference needs on small machines.
X264_PRESET = "veryfast"


class VideoWriter:
    """H.264 (PyAV) or mp4v (OpenCV) video from RGB frames; odd sizes are padded to even (4:2:0).

    For eyes only: 4:2:0 chroma and lossy coding blend class colours at every edge (one
    decoded frame of a 7-class mask held thousands of distinct colours). Exact class ids
    come from `IdsVideoWriter` or PNG label maps.
    """

    def __init__(self, path: Path, fps: float, container_format: str) -> None:
        self._library = video_library()
        self._path = path
        self._fps = fps
        self._format = container_format
        self._writer: Any = None
        self._stream: Any = None
        self._opencv_path = path.with_name(path.name + ".mp4")

    def _open(self, height: int, width: int) -> None:
        if self._library == "av":
            import av

            self._writer = av.open(str(self._path), mode="w", format=self._format)
            codec = next(c for c in ("libx264", "h264", "mpeg4") if c in av.codecs_available)
            self._stream = self._writer.add_stream(codec, rate=Fraction(self._fps).limit_denominator(1001))
            self._stream.width, self._stream.height = width, height
            self._stream.pix_fmt = "yuv420p"
            if codec == "libx264":
                self._stream.codec_context.options = {"preset": X264_PRESET}
        else:
            import cv2

            fourcc = cv2.VideoWriter_fourcc(*"mp4v")
            # OpenCV picks the container by suffix, and temp files have none.
            self._writer = cv2.VideoWriter(str(self._opencv_path), fourcc, self._fps, (width, height))
            if not self._writer.isOpened():
                raise SegexportError(f"{self._path}: OpenCV cannot write this video")

    def write(self, rgb: np.ndarray) -> None:
        height, width = rgb.shape[:2]
        even = np.pad(rgb, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
        if self._writer is None:
            self._open(*even.shape[:2])
        if self._library == "av":
            import av

            for packet in self._stream.encode(av.VideoFrame.from_ndarray(even, format="rgb24")):
                self._writer.mux(packet)
        else:
            self._writer.write(np.ascontiguousarray(even[..., ::-1]))

    def close(self) -> None:
        if self._writer is None:
            return
        if self._library == "av":
            for packet in self._stream.encode():
                self._writer.mux(packet)
            self._writer.close()
        else:
            self._writer.release()
            os.replace(self._opencv_path, self._path)
        self._writer = None


class IdsVideoWriter:
    """Class ids losslessly as FFV1 in Matroska (PyAV's wheels carry the encoder).

    One gray plane per frame, 8-bit up to 256 classes and 16-bit past that; decoding a
    frame (`frame.to_ndarray()`) gives the ids back exactly.
    """

    def __init__(self, path: Path, fps: float, num_classes: int) -> None:
        if importlib.util.find_spec("av") is None:
            raise UnavailableError(f"a lossless mask video needs PyAV; {VIDEO_EXTRA}")
        self._path, self._fps = path, fps
        self._format = "gray" if num_classes <= 256 else "gray16le"
        self._dtype = np.uint8 if num_classes <= 256 else np.uint16
        self._writer: Any = None
        self._stream: Any = None

    def write(self, mask: np.ndarray) -> None:
        import av

        if self._writer is None:
            self._writer = av.open(str(self._path), mode="w", format="matroska")
            self._stream = self._writer.add_stream("ffv1", rate=Fraction(self._fps).limit_denominator(1001))
            self._stream.height, self._stream.width = np.shape(mask)
            self._stream.pix_fmt = self._format
        ids: Any = np.ascontiguousarray(mask, dtype=self._dtype)  # uint8 or uint16, as the format says
        frame = av.VideoFrame.from_ndarray(ids, format=self._format)
        for packet in self._stream.encode(frame):
            self._writer.mux(packet)

    def close(self) -> None:
        if self._writer is None:
            return
        for packet in self._stream.encode():
            self._writer.mux(packet)
        self._writer.close()
        self._writer = None
