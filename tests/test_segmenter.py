"""Segmenter: backend choice, geometry, validation, batching, threads, streams, ArgMax heads."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from segexport.data import SyntheticScenes
from segexport.errors import SegexportError, UnavailableError
from segexport.runtime.crf import DenseCRF
from segexport.runtime.geometry import Placement, SizeRule, resize_logits
from segexport.runtime.preprocessing import preprocess, resize
from segexport.runtime.segmenter import TTA, Segmenter, as_rgb

ODD = (371, 533)


@pytest.fixture(scope="module")
def seg(small_artifact: Path) -> Segmenter:
    return Segmenter.load(small_artifact, threads=1, color="rgb")


def scene(index: int = 0, size: tuple[int, int] = ODD) -> np.ndarray:
    return SyntheticScenes("eval", index + 1, size)[index][0]


# --------------------------------------------------------------------------- load and describe


def test_runtime_runs_masks_without_torch(small_artifact: Path) -> None:
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # any import of torch now fails\n"
        "import numpy as np\n"
        "from segexport.runtime import Segmenter\n"
        "import segexport.runtime.pipeline\n"
        f"seg = Segmenter.load({str(small_artifact)!r}, threads=1)\n"
        "mask = seg(np.zeros((50, 70, 3), np.uint8), color='rgb')\n"
        "assert mask.shape == (50, 70), mask.shape\n"
        "loaded = [m for m, mod in sys.modules.items() if mod and m.split('.')[0] in ('torch', 'onnx')]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_auto_picks_cpu_here_and_says_why_not_the_gpu_backends(seg: Segmenter) -> None:
    text = seg.describe()
    assert seg.backend == "onnxruntime-cpu" and seg.precision == "fp32"
    assert "tensorrt: " in text and "onnxruntime-cuda: " in text
    assert "CUDAExecutionProvider" in text


def test_explicit_backend_that_cannot_run_here_fails_with_the_reason(small_artifact: Path) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has the CUDA provider")
    with pytest.raises(UnavailableError, match="no CUDAExecutionProvider"):
        Segmenter.load(small_artifact, backend="onnxruntime-cuda")
    with pytest.raises(UnavailableError, match=r"segexport quantize --int8-cpu"):
        Segmenter.load(small_artifact, precision="int8")
    with pytest.raises(SegexportError, match="unknown backend"):
        Segmenter.load(small_artifact, backend="tensorflow")


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider' is not in available")
def test_a_silent_fallback_to_the_cpu_is_caught(
    small_artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ONNX Runtime creates a CPU session when the CUDA provider cannot load; that is not CUDA."""
    import onnxruntime

    real = onnxruntime.get_available_providers()
    if "CUDAExecutionProvider" in real:
        pytest.skip("this machine has the CUDA provider")
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", *real])
    with pytest.raises(
        UnavailableError, match="gave the session CPUExecutionProvider instead of CUDAExecutionProvider"
    ):
        Segmenter.load(small_artifact, backend="onnxruntime-cuda")
    assert Segmenter.load(small_artifact).backend == "onnxruntime-cpu"


# --------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("mode", ["fixed", "keep-aspect", "native"])
def test_masks_come_back_at_odd_input_sizes(small_artifact: Path, mode: str) -> None:
    seg = Segmenter.load(small_artifact, threads=1, resize=mode)
    image = scene()
    mask = seg(image, color="rgb")
    assert mask.shape == ODD and mask.dtype == np.uint8
    assert seg.probabilities(image, color="rgb").shape == (seg.num_classes, *ODD)
    assert mask.class_names == seg.class_names and mask.palette.shape == (256, 3)


def test_native_is_refused_outside_the_range(small_artifact: Path) -> None:
    seg = Segmenter.load(small_artifact, threads=1, resize="native")
    high = SizeRule.from_manifest(seg.manifest).max_size[0]
    with pytest.raises(SegexportError, match="outside what the artifact accepts"):
        seg(np.zeros((high + 1, 40, 3), np.uint8), color="rgb")


def test_fixed_feeds_what_calibration_saw(seg: Segmenter, small_artifact: Path) -> None:
    """The same resize + preprocess as calibration and verify, and logits resized before argmax."""
    from segexport.runtime import open_artifact

    runner, manifest = open_artifact(small_artifact, threads=1)
    image = scene()
    pre = manifest["preprocessing"]
    tensor = preprocess(resize(image, seg.rule.export), pre["mean"], pre["std"], pre["scale"])
    logits = runner.infer({"image": tensor})["logits"][0]
    expected = np.argmax(resize_logits(logits, ODD), axis=0)
    np.testing.assert_array_equal(seg(image, color="rgb"), expected)


def test_resize_logits_matches_pytorch_bilinear() -> None:
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    for source, target in [((16, 24), (37, 53)), ((40, 30), (17, 11)), ((8, 8), (8, 8))]:
        logits = rng.normal(size=(2, 5, *source)).astype(np.float32)
        expected = F.interpolate(torch.from_numpy(logits), size=target, mode="bilinear", align_corners=False)
        np.testing.assert_allclose(resize_logits(logits, target), expected.numpy(), atol=1e-5)


def test_placements_invert_exactly_for_random_sizes() -> None:
    """Property: placing an image and restoring its pixels gives the image back, unshifted.

    Peers shipped letterboxes that restore one pixel off; a linear ramp exposes any shift
    as a constant offset in the restored values.
    """
    rule = SizeRule(export=(64, 96), min_size=(32, 32), max_size=(256, 256), stride=16, batch=(1, 4))
    rng = np.random.default_rng(7)
    pre = {"mean": [0, 0, 0], "std": [1, 1, 1], "scale": 1.0}
    for _ in range(40):
        shape = (int(rng.integers(5, 250)), int(rng.integers(5, 250)))
        ys, xs = np.mgrid[: shape[0], : shape[1]]
        ramp = np.stack([ys * 200 // shape[0], xs * 200 // shape[1], np.full(shape, 9)], axis=2).astype(
            np.uint8
        )
        for mode in ("native", "keep-aspect"):
            placement = rule.place(shape, mode)
            tensor = placement.tensor(ramp, pre)
            assert tensor.shape[1:] == placement.padded
            assert all(p % 16 == 0 for p in placement.padded)
            restored = placement.restore_logits(tensor)
            assert restored.shape == (3, *shape)
            if placement.scaled == shape:
                np.testing.assert_array_equal(restored, ramp.transpose(2, 0, 1))
            else:  # resized twice: no systematic offset, small error away from the borders
                error = restored - ramp.transpose(2, 0, 1)
                inner = error[
                    :2, shape[0] // 8 : -(shape[0] // 8) or None, shape[1] // 8 : -(shape[1] // 8) or None
                ]
                assert abs(float(inner.mean())) < 1.0, (shape, mode, float(inner.mean()))
            labels = np.argmax(restored, axis=0)
            assert labels.shape == shape


def test_placement_restores_argmax_masks_with_nearest() -> None:
    placement = Placement(original=(5, 7), scaled=(10, 14), padded=(16, 16))
    mask = np.zeros((16, 16), np.int32)
    mask[:10, 7:14] = 3
    mask[10:, :] = 9  # padding: must be cropped away
    restored = placement.restore_mask(mask)
    assert restored.shape == (5, 7) and set(np.unique(restored)) == {0, 3}


# --------------------------------------------------------------------------- inputs


@pytest.mark.parametrize(
    ("image", "kwargs", "message"),
    [
        (np.zeros((20, 20, 3), np.uint8), {"color": None}, "needs its colour order"),
        (np.zeros((20, 20, 3), np.int64), {"color": "rgb"}, "unsupported image dtype"),
        (np.zeros((2, 20, 20, 3), np.uint8), {"color": "rgb"}, "expected an image"),
        (np.zeros((20, 20, 2), np.uint8), {"color": "rgb"}, "expected 3 colour channels"),
        (np.zeros((20, 20), np.uint8), {"color": "rgb"}, "grayscale"),
        (np.zeros((20, 20, 4), np.uint8), {"color": "rgb"}, "4-channel"),
        (np.zeros((0, 20, 3), np.uint8), {"color": "rgb"}, "empty image"),
        (np.full((20, 20, 3), np.nan, np.float32), {"color": "rgb"}, "NaN or Inf"),
        (np.full((20, 20, 3), 3.0, np.float32), {"color": "rgb"}, "must be in 0..1"),
        (np.zeros((20, 20, 3), np.uint8), {"color": "yuv"}, "color must be"),
        ([1, 2, 3], {"color": "rgb"}, "got list"),
    ],
)
def test_bad_images_get_one_clear_error(image: object, kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(SegexportError, match=message):
        as_rgb(image, **kwargs)


def test_conversions_happen_only_when_asked(seg: Segmenter) -> None:
    gray = np.full((20, 30), 77, np.uint8)
    np.testing.assert_array_equal(as_rgb(gray, "rgb", convert=True), np.full((20, 30, 3), 77, np.uint8))
    bgra = np.zeros((20, 30, 4), np.uint8)
    bgra[..., 0] = 200  # blue in BGRA
    assert as_rgb(bgra, "bgr", convert=True)[0, 0].tolist() == [0, 0, 200]
    floats = np.full((4, 4, 3), 0.5, np.float32)
    assert as_rgb(floats, "rgb")[0, 0].tolist() == [128, 128, 128]


def test_bgr_arrays_and_files_give_the_rgb_mask(seg: Segmenter, tmp_path: Path) -> None:
    from PIL import Image

    image = scene()
    expected = seg(image, color="rgb")
    np.testing.assert_array_equal(seg(np.ascontiguousarray(image[..., ::-1]), color="bgr"), expected)
    Image.fromarray(image).save(tmp_path / "scene.png")
    np.testing.assert_array_equal(seg(tmp_path / "scene.png"), expected)
    np.testing.assert_array_equal(seg(Image.fromarray(image)), expected)


def test_predict_batches_up_to_the_max_batch(small_artifact: Path) -> None:
    seg = Segmenter.load(small_artifact, threads=1, color="rgb")
    batches: list[int] = []
    runner = seg._runner
    assert runner is not None
    real_infer = runner.infer

    def counting(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batches.append(len(feeds["image"]))
        return real_infer(feeds)

    runner.infer = counting  # type: ignore[method-assign]
    images = [scene(i, (40 + i, 50)) for i in range(seg.max_batch + 3)]
    masks = seg.predict(images)
    assert batches == [seg.max_batch, 3]
    for image, mask in zip(images, masks, strict=True):
        np.testing.assert_array_equal(mask, seg(image))
    stacked = np.stack([scene(i, (40, 50)) for i in range(3)])
    assert [m.shape for m in seg.predict(stacked)] == [(40, 50)] * 3
    with pytest.raises(SegexportError, match="predict takes a list"):
        seg.predict(stacked[0])


def test_four_threads_sharing_one_segmenter_give_the_single_thread_masks(seg: Segmenter) -> None:
    images = [scene(i, (96 + 8 * i, 128)) for i in range(6)]
    expected = [seg(image) for image in images]
    results: dict[tuple[int, int], np.ndarray] = {}
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for round_ in range(2):
                for index, image in enumerate(images):
                    results[worker, round_ * len(images) + index] = seg(image)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(results) == 4 * 2 * len(images)
    for (_, slot), mask in results.items():
        np.testing.assert_array_equal(mask, expected[slot % len(images)])


def test_a_closed_segmenter_refuses_work(small_artifact: Path) -> None:
    seg = Segmenter.load(small_artifact, threads=1, color="rgb")
    seg.close()
    with pytest.raises(SegexportError, match="closed"):
        seg(np.zeros((20, 20, 3), np.uint8))


# --------------------------------------------------------------------------- streams


def test_stream_keeps_order_and_matches_predict(seg: Segmenter) -> None:
    frames = [scene(i, (64, 80)) for i in range(9)]
    expected = seg.predict(frames)
    with seg.stream(iter(frames), batch=2) as stream:
        items = list(stream)
    assert [item.number for item in items] == list(range(9))
    for item, mask in zip(items, expected, strict=True):
        np.testing.assert_array_equal(item.mask, mask)
        assert item.frame is frames[item.number]


def test_stream_reraises_source_errors_in_the_caller(seg: Segmenter) -> None:
    def frames() -> object:
        for i in range(3):
            yield scene(i, (64, 64))
        raise RuntimeError("camera unplugged")

    seen = []
    with pytest.raises(RuntimeError, match="camera unplugged"):
        for item in seg.stream(frames()):  # type: ignore[arg-type]
            seen.append(item.number)
    assert seen == [0, 1, 2]
    with pytest.raises(SegexportError, match="NaN or Inf"):
        list(seg.stream([np.full((8, 8, 3), np.nan, np.float32)]))


def endless_frames(closed: threading.Event) -> Iterator[np.ndarray]:
    """A long source that records being closed (generators close on GeneratorExit)."""
    try:
        for i in range(1000):
            yield scene(i % 4, (64, 64))
    finally:
        closed.set()


def test_stream_closes_cleanly_when_the_consumer_stops_early(seg: Segmenter) -> None:
    closed = threading.Event()
    stream = seg.stream(endless_frames(closed))
    for item in stream:
        if item.number == 2:
            break
    stream.close()
    assert closed.wait(5), "the source was not closed"
    assert not any(t.name.startswith("segexport-stream") and t.is_alive() for t in threading.enumerate())
    with pytest.raises(SegexportError, match="stream is closed"):
        next(stream)


def test_a_stream_dropped_after_break_stops_its_threads(seg: Segmenter) -> None:
    import gc

    closed = threading.Event()
    for item in seg.stream(endless_frames(closed)):
        if item.number == 1:
            break
    gc.collect()
    assert closed.wait(5), "the source was not closed"
    deadline = time.monotonic() + 5
    while any(t.name.startswith("segexport-stream") for t in threading.enumerate()):
        assert time.monotonic() < deadline, "stream threads still running"
        time.sleep(0.05)


def test_drop_frames_keeps_the_newest(seg: Segmenter) -> None:
    frames = [scene(i % 4, (64, 64)) for i in range(60)]
    numbers = []
    for item in seg.stream(frames, drop_frames=True):
        numbers.append(item.number)
        time.sleep(0.03)  # a slow consumer
    assert numbers == sorted(numbers) and numbers[-1] == 59
    assert len(numbers) < 60


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    pytest.skip("no /proc/self/status on this platform")


def test_stream_memory_stays_flat_over_500_frames(seg: Segmenter) -> None:
    frame = scene(0, (120, 160))

    def frames() -> object:
        for _ in range(500):
            yield frame.copy()

    readings = []
    for item in seg.stream(frames(), batch=2):  # type: ignore[arg-type]
        if item.number in (100, 499):
            readings.append(_rss_mib())
    assert len(readings) == 2
    assert readings[1] - readings[0] < 40, readings  # generous: allocator noise, not a leak per frame


# --------------------------------------------------------------------------- TTA, CRF, mask heads


def test_tta_averages_probabilities(small_artifact: Path) -> None:
    plain = Segmenter.load(small_artifact, threads=1, color="rgb")
    single = Segmenter.load(small_artifact, threads=1, color="rgb", tta=TTA(scales=(1.0,), flip=False))
    image = scene(0, (64, 96))
    np.testing.assert_allclose(single.probabilities(image), plain.probabilities(image), atol=1e-6)
    full = Segmenter.load(small_artifact, threads=1, color="rgb", tta=TTA())
    probabilities = full.probabilities(image)
    assert probabilities.shape == (plain.num_classes, 64, 96)
    np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=1e-4)
    assert full(image).shape == (64, 96)


def test_crf_pulls_noisy_labels_to_colour_edges() -> None:
    rng = np.random.default_rng(0)
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, 30:] = 220
    truth = (np.arange(60)[None, :] >= 30).repeat(40, axis=0).astype(np.int64)
    clean = np.stack([truth == 0, truth == 1]).astype(np.float32) * 0.6 + 0.2
    noisy = np.clip(clean + rng.normal(0, 0.35, clean.shape), 0.01, None).astype(np.float32)
    noisy /= noisy.sum(axis=0, keepdims=True)
    before = float((noisy.argmax(0) == truth).mean())
    refined = DenseCRF().refine(image, noisy)
    after = float((refined.argmax(0) == truth).mean())
    np.testing.assert_allclose(refined.sum(axis=0), 1.0, atol=1e-5)
    assert before < 0.9 and after > 0.98, (before, after)


def test_crf_refinement_runs_through_the_segmenter(small_artifact: Path) -> None:
    seg = Segmenter.load(small_artifact, threads=1, color="rgb", refine="crf")
    assert seg(scene(0, (50, 70))).shape == (50, 70)
    with pytest.raises(SegexportError, match="unknown refinement"):
        Segmenter.load(small_artifact, refine="bilateral")


def _argmax_artifact(directory: Path, head: str) -> None:
    """A hand-made 1x1-conv 'model' with a logits or an ArgMax mask output, and its manifest."""
    import json

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from segexport.runtime.artifacts import describe_files

    weights = np.random.default_rng(3).normal(size=(4, 3, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["image", "w"], ["logits"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4, "height", "width"])]
    if head == "mask":
        nodes += [
            helper.make_node("ArgMax", ["logits"], ["ids"], axis=1, keepdims=0),
            helper.make_node("Cast", ["ids"], ["mask"], to=TensorProto.INT32),
        ]
        outputs = [helper.make_tensor_value_info("mask", TensorProto.INT32, ["batch", "height", "width"])]
    graph = helper.make_graph(
        nodes,
        "argmax",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        outputs,
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    directory.mkdir()
    onnx.save(model, directory / "model.onnx")
    manifest = {
        "schema_version": 1,
        "model": {"name": f"conv-{head}", "num_classes": 4, "class_names": ["a", "b", "c", "d"]},
        "inputs": [{"name": "image"}],
        "outputs": [{"name": outputs[0].name}],
        "head": head,
        "export_shape": "1x32x48",
        "dynamic_axes": {"batch": [1, 4], "height": [16, 256], "width": [16, 256]},
        "size_rule": {"divisible_by": 8},
        "preprocessing": {"scale": 1 / 255, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        "files": describe_files(directory),
    }
    (directory / "manifest.json").write_text(json.dumps(manifest))


def test_an_argmax_mask_head_is_used_with_nearest_resizing(tmp_path: Path) -> None:
    _argmax_artifact(tmp_path / "logits", "logits")
    _argmax_artifact(tmp_path / "mask", "mask")
    image = scene(0, (45, 61))
    with_logits = Segmenter.load(tmp_path / "logits", threads=1, color="rgb")
    with_mask = Segmenter.load(tmp_path / "mask", threads=1, color="rgb")
    mask = with_mask(image)
    assert mask.shape == (45, 61) and mask.class_names == ("a", "b", "c", "d")
    # Nearest resizing of the network's label map, not bilinear logits: they agree almost everywhere.
    assert float((mask == with_logits(image)).mean()) > 0.85
    pre = with_mask.manifest["preprocessing"]
    labels = np.argmax(
        with_logits._runner.infer(  # type: ignore[union-attr]
            {"image": preprocess(resize(image, (32, 48)), pre["mean"], pre["std"], pre["scale"])}
        )["logits"][0],
        axis=0,
    )
    np.testing.assert_array_equal(mask, resize(labels, (45, 61), labels=True))
    with pytest.raises(SegexportError, match="only a mask"):
        with_mask.probabilities(image)
    with pytest.raises(SegexportError, match="need logits"):
        Segmenter.load(tmp_path / "mask", tta=TTA())


def test_a_static_artifact_runs_at_its_export_size_under_fixed() -> None:
    rule = SizeRule(export=(100, 150), min_size=(100, 150), max_size=(100, 150), stride=32, batch=(1, 1))
    assert rule.place(ODD, "fixed") == Placement(ODD, (100, 150), (100, 150))
    keep = rule.place(ODD, "keep-aspect")
    assert keep.padded == (100, 150) and keep.scaled[0] <= 100 and keep.scaled[1] <= 150
