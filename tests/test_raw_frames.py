"""`--input-format uint8-nhwc`: graphs that take raw RGB frames and normalise inside.

The prefix is checked against the float graph it wraps, the pre-processing table against the
float path, and one artifact goes through export, quantize, verify, bench, the Segmenter and
Triton's configuration (the TensorRT runner's upload is in `test_engine_runner.py`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from segexport.errors import SegexportError
from segexport.export.graph import take_raw_frames
from segexport.runtime import Segmenter
from segexport.runtime.preprocessing import (
    input_shape,
    pad_input,
    preprocess,
    preprocess_for,
    random_input,
    spatial_axes,
    to_pixels,
)
from segexport.runtime.schema import validate_manifest
from tests.clitools import assert_one_line_error, run

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FLOAT = {"mean": list(MEAN), "std": list(STD), "scale": 1 / 255}
FRAMES = {**FLOAT, "input_format": "uint8-nhwc"}


def _conv_graph(elem_type: int = TensorProto.FLOAT, channels: int = 3) -> onnx.ModelProto:
    weight = np.random.default_rng(0).normal(size=(4, channels, 3, 3)).astype(np.float32)
    image = helper.make_tensor_value_info("image", elem_type, ["batch", channels, "height", "width"])
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["logits"], pads=[1, 1, 1, 1])],
        "g",
        [image],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4, "height", "width"])],
        [numpy_helper.from_array(weight, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def _run(model: onnx.ModelProto, image: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"image": image})[0])


def test_the_prefix_gives_the_float_graph_bit_for_bit() -> None:
    """Cast, NHWC -> NCHW, * scale, - mean, / std: the steps of `preprocess`, in its order."""
    plain = _conv_graph()
    framed = take_raw_frames(plain, MEAN, STD, 1 / 255)
    declared = framed.graph.input[0].type.tensor_type
    assert declared.elem_type == TensorProto.UINT8
    assert [d.dim_param or d.dim_value for d in declared.shape.dim] == ["batch", "height", "width", 3]
    frames = np.random.default_rng(1).integers(0, 256, size=(2, 24, 40, 3), dtype=np.uint8)
    np.testing.assert_array_equal(_run(framed, frames), _run(plain, preprocess(frames, MEAN, STD)))


@pytest.mark.parametrize(
    ("graph", "message"),
    [
        (_conv_graph(TensorProto.FLOAT16), "float [N, 3, H, W]"),
        (_conv_graph(channels=1), "float [N, 3, H, W]"),
    ],
)
def test_the_prefix_refuses_inputs_that_are_not_float_rgb(graph: onnx.ModelProto, message: str) -> None:
    with pytest.raises(SegexportError, match=message.replace("[", r"\[")):
        take_raw_frames(graph, MEAN, STD, 1 / 255)


def test_the_preprocessing_table_for_raw_frames() -> None:
    frames = np.random.default_rng(2).integers(0, 256, size=(2, 6, 10, 3), dtype=np.uint8)
    np.testing.assert_array_equal(preprocess_for(FRAMES, frames), frames)
    assert preprocess_for(FLOAT, frames).shape == (2, 3, 6, 10)
    assert input_shape(FRAMES, 2, (6, 10)) == (2, 6, 10, 3) and input_shape(FLOAT, 2, (6, 10)) == (
        2,
        3,
        6,
        10,
    )
    assert spatial_axes(FRAMES) == (1, 2) and spatial_axes(FLOAT) == (2, 3)
    random = random_input(FRAMES, 1, (6, 10), np.random.default_rng(0))
    assert random.dtype == np.uint8 and random.shape == (1, 6, 10, 3)
    # Pictures of what ran: both formats give the pixels back (float within rounding).
    np.testing.assert_array_equal(to_pixels(FRAMES, frames[0]), frames[0])
    assert np.abs(to_pixels(FLOAT, preprocess(frames, MEAN, STD)[0]).astype(int) - frames[0]).max() <= 1
    # Padding holds the mean colour: 0 after normalisation, the rounded mean pixel for frames.
    padded = pad_input(FRAMES, frames[0], (8, 16))
    assert padded.shape == (8, 16, 3) and tuple(padded[-1, -1]) == (124, 116, 104)
    assert not pad_input(FLOAT, preprocess(frames, MEAN, STD)[0], (8, 16))[:, -1, -1].any()
    with pytest.raises(SegexportError, match="RGB uint8"):
        preprocess_for(FRAMES, frames.astype(np.float32))


def test_preprocess_is_the_formula_step_by_step() -> None:
    """The in-place float path gives exactly `(x * scale - mean) / std` of the NCHW view."""
    frames = np.random.default_rng(6).integers(0, 256, size=(2, 9, 14, 3), dtype=np.uint8)
    mean = np.asarray(MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(STD, dtype=np.float32).reshape(1, 3, 1, 1)
    expected = (frames.transpose(0, 3, 1, 2).astype(np.float32) * np.float32(1 / 255) - mean) / std
    actual = preprocess(frames, MEAN, STD)
    assert actual.flags.c_contiguous and actual.dtype == np.float32
    np.testing.assert_array_equal(actual, expected)


def test_a_manifest_with_an_unknown_input_format_is_refused(small_artifact: Path) -> None:
    manifest = json.loads((small_artifact / "manifest.json").read_text())
    manifest["preprocessing"]["input_format"] = "yuv420"
    with pytest.raises(SegexportError, match=r"preprocessing\.input_format"):
        validate_manifest(manifest, small_artifact / "manifest.json")


def test_input_format_refusals_are_one_line(tmp_path: Path) -> None:
    code, _, err = run(
        "onnx", "--model", "maskrcnn-mask-head", "--input-format", "uint8-nhwc", "--out", str(tmp_path / "a")
    )
    assert_one_line_error(code, err, "takes RoI features, not images")
    code, _, err = run("onnx", "--model", "unet-small", "--input-format", "rgb", "--out", str(tmp_path / "b"))
    assert code == 2 and "--input-format" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.slow
def test_raw_frames_through_every_stage(tmp_path: Path) -> None:
    """unet-small (demo weights) exported both ways: the raw-frame artifact quantizes, verifies,
    benches and segments an odd-sized picture exactly as the float artifact does."""
    from PIL import Image

    frames_dir, float_dir = tmp_path / "frames", tmp_path / "float"
    common = ["--model", "unet-small", "--weights", "demo", "--size", "64x64"]
    code, out, err = run("onnx", *common, "--input-format", "uint8-nhwc", "--out", str(frames_dir), "--json")
    assert code == 0, err
    manifest = json.loads((frames_dir / "manifest.json").read_text())
    assert manifest["inputs"][0] == {
        "name": "image",
        "dtype": "uint8",
        "shape": ["batch", "height", "width", 3],
    }
    assert manifest["preprocessing"]["input_format"] == "uint8-nhwc"
    assert manifest["verification"]["frames"]["passed"] is True
    assert run("onnx", *common, "--out", str(float_dir))[0] == 0

    code, out, err = run(
        "quantize", "--artifacts", str(frames_dir), "--int8-cpu", "--calib-size", "32", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["precisions"]["int8-cpu"]["agreement"] >= 0.98
    code, out, err = run("verify", "--artifacts", str(frames_dir), "--limit", "8")
    assert code == 0, err
    formats = ["--formats", "onnx-fp32,onnx-int8-cpu", "--backends", "ort-cpu"]
    code, out, err = run(
        "bench", "--artifacts", str(frames_dir), *formats, "--size", "64x64", "--runs", "2", "--json"
    )
    assert code == 0, err
    assert {row["status"] for row in json.loads(out)["rows"]} == {"ok"}

    picture = np.random.default_rng(5).integers(0, 256, size=(53, 91, 3), dtype=np.uint8)
    path = tmp_path / "odd.png"
    Image.fromarray(picture).save(path)
    for mode in ("fixed", "keep-aspect"):
        masks = [
            Segmenter.load(d, resize=mode).predict([picture], color="rgb")[0] for d in (frames_dir, float_dir)
        ]
        ids = [np.asarray(mask) for mask in masks]
        assert ids[0].shape == (53, 91)
        assert float(np.mean(ids[0] == ids[1])) >= 0.999, mode
    code, _, err = run(
        "run", "--artifacts", str(frames_dir), "--input", str(path), "--output", str(tmp_path / "m.png")
    )
    assert code == 0, err


def test_triton_serves_raw_frames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The network's config takes UINT8 [H, W, 3] frames, the ensemble's pre-processing step hands
    it resized frames (no float conversion), and the ORT-TensorRT profile is in NHWC."""
    from segexport.export import ExportRequest, export_onnx
    from segexport.runtime.ort_gpu import profile_shapes
    from tests.test_triton import config_of, load_step, write
    from tests.triton.fake_pb_utils import InferenceRequest, Tensor

    artifact = tmp_path / "frames"
    export_onnx(ExportRequest("unet-small", size=(64, 64), out_dir=artifact, input_format="uint8-nhwc"))
    write(artifact, tmp_path / "repo", name="seg", ensemble=True)
    network = config_of(tmp_path / "repo", "seg")
    assert network["input"][0]["data_type"] == "TYPE_UINT8" and [
        int(d) for d in network["input"][0]["dims"]
    ] == [-1, -1, 3]
    pre_config = config_of(tmp_path / "repo", "seg_preprocess")
    assert [int(d) for d in pre_config["output"][0]["dims"]] == [1, 64, 64, 3]
    pre = load_step(tmp_path / "repo" / "seg_preprocess", monkeypatch)
    picture = np.random.default_rng(0).integers(0, 256, size=(30, 50, 3), dtype=np.uint8)
    (response,) = pre.execute([InferenceRequest([Tensor("IMAGE", picture)])])
    assert response.error is None
    network_input = response.output_tensors[0].as_numpy()
    assert network_input.dtype == np.uint8 and network_input.shape == (1, 64, 64, 3)
    manifest = json.loads((artifact / "manifest.json").read_text())
    low, high = manifest["dynamic_axes"]["height"][0], manifest["dynamic_axes"]["height"][1]
    assert profile_shapes(manifest)["min"] == f"image:1x{low}x{manifest['dynamic_axes']['width'][0]}x3"
    assert profile_shapes(manifest)["max"].endswith(f"x{high}x{manifest['dynamic_axes']['width'][1]}x3")
    write(artifact, tmp_path / "trt", name="seg", ort_trt="fp16")
    parameters = config_of(tmp_path / "trt", "seg")["optimization"]["execution_accelerators"]
    assert "x3" in json.dumps(parameters)  # the ORT-TensorRT profile in the input's own layout


def test_an_adopted_onnx_takes_raw_frames(tmp_path: Path) -> None:
    """`--from-onnx` with `--input-format uint8-nhwc`: the adopted graph gets the prefix, checked
    against itself on random frames; its reference is then the raw-frame graph."""
    source = tmp_path / "theirs.onnx"
    onnx.save(_conv_graph(), str(source))
    out = tmp_path / "adopted"
    args = ["--from-onnx", str(source), "--size", "32x32", "--input-format", "uint8-nhwc", "--out", str(out)]
    code, _, err = run("onnx", *args)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"][0]["dtype"] == "uint8" and manifest["verification"]["frames"]["passed"]
    frames = np.random.default_rng(4).integers(0, 256, size=(1, 32, 32, 3), dtype=np.uint8)
    adopted = _run(onnx.load(str(out / "model.onnx")), frames)
    np.testing.assert_array_equal(adopted, _run(_conv_graph(), preprocess(frames, MEAN, STD)))
