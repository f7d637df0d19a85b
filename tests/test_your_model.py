"""Your model, not only ours: a user's module, factory file or ONNX through every stage.

Small modules at 64x64 keep these fast; the real libraries are in test_library_models.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import segexport
from segexport.errors import SegexportError
from segexport.quantize import QuantizeRequest, quantize_artifact
from segexport.runtime import Segmenter
from segexport.verify import VerifyRequest, verify_artifacts
from tests.clitools import assert_one_line_error, run

ROOT = Path(__file__).resolve().parents[1]


class Quarter(nn.Module):
    """Scores at 1/4 of the input, in a Hugging Face-like dict beside an aux head."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU())
        self.head = nn.Conv2d(8, classes, 1)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.head(self.down(image)), "hidden": self.down(image)}


def calib_dir(tmp_path: Path, count: int = 4) -> Path:
    folder = tmp_path / "calib"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(count):
        Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    return folder


@pytest.mark.parametrize("upsample", ["bilinear", "none"])
def test_a_module_goes_through_every_stage(tmp_path: Path, upsample: str) -> None:
    torch.manual_seed(0)
    model = Quarter()
    out = tmp_path / "art"
    manifest = segexport.export(  # type: ignore[operator]
        model,
        size=(64, 64),
        classes=["a", "b", "c"],
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
        out=out,
        upsample=upsample,
    )
    probe = manifest["source"]["probe"]
    assert manifest["source"]["kind"] == "python" and manifest["source"]["class"].endswith("Quarter")
    assert probe["output"] == {"selector": "key:logits", "scale": 4, "upsample": upsample}
    assert probe["stride"] == 4 and manifest["size_rule"] == {"divisible_by": 4}
    assert manifest["head"]["scores"] == "logits" and manifest["model"]["class_names"] == ["a", "b", "c"]
    assert len(manifest["verification"]["fp32"]["shapes"]) >= 3
    assert manifest["outputs"][0]["shape"][2] == ("height" if upsample == "bilinear" else "height/4")
    with pytest.raises(SegexportError, match="INT8 calibration needs images"):
        quantize_artifact(QuantizeRequest(artifacts=out, fp16=False, int8_cpu=True, int8=False))
    quantize_artifact(QuantizeRequest(artifacts=out, int8_cpu=True, calib=str(calib_dir(tmp_path))))
    assert {"model.fp16.onnx", "model.int8.onnx", "model.int8-cpu.onnx"} <= set(
        json.loads((out / "manifest.json").read_text())["files"]
    )
    with Segmenter.load(out) as segmenter:
        mask = segmenter(np.zeros((37, 51, 3), np.uint8), color="rgb")
    assert np.asarray(mask).shape == (37, 51)
    with pytest.raises(SegexportError, match="pass the module"):
        verify_artifacts(VerifyRequest(artifacts=out, data="random", limit=1))
    report = verify_artifacts(
        VerifyRequest(artifacts=out, data="random", limit=1, precision="fp32", module=model)
    )
    assert report.passed


def test_the_zoos_panoptic_fpn_runs_in_segmenter(tmp_path: Path) -> None:
    code, _, err = run("onnx", "--model", "panoptic-fpn", "--size", "64x64", "--max-size", "128x128",
                       "--num-classes", "4", "--out", str(tmp_path / "p"))  # fmt: skip
    assert code == 0, err
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert manifest["head"]["scores"] == "semantic_logits"
    with Segmenter.load(tmp_path / "p") as segmenter:
        assert np.asarray(segmenter(np.zeros((50, 70, 3), np.uint8), color="rgb")).shape == (50, 70)


def test_the_example_factory_exports_from_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    factory = f"{ROOT}/examples/my_model.py:build"
    code, _, err = run("onnx", "--model", factory, "--size", "64x64", "--model-arg", "num_classes=3",
                       "--classes", "sky,road,car", "--out", str(out))  # fmt: skip
    assert code == 0, err
    source = json.loads((out / "manifest.json").read_text())["source"]
    assert source["factory"].endswith("my_model.py:build") and source["arguments"] == {"num_classes": 3}
    # the factory seeds itself, so verify rebuilds the reference from the record
    code, _, err = run("verify", "--artifacts", str(out), "--data", "random", "--limit", "1")
    assert code == 0, err
    # `segexport reference` re-records reference.npz through the same door (the factory's record)
    code, _, err = run("reference", "--artifacts", str(out), "--force")
    assert code == 0, err
    code, _, err = run("verify", "--artifacts", str(out), "--against", "recorded")
    assert code == 0, err


def test_a_foreign_onnx_is_adopted_quantized_and_run(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1)).eval()
    path = tmp_path / "theirs.onnx"
    with pytest.warns(DeprecationWarning):
        torch.onnx.export(
            model,
            (torch.randn(1, 3, 64, 64),),
            str(path),
            dynamo=False,
            input_names=["x"],
            output_names=["scores"],
        )
    out = tmp_path / "adopted"
    code, _, err = run("onnx", "--from-onnx", str(path), "--classes", "a,b,c", "--out", str(out))
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["kind"] == "onnx" and manifest["head"]["scores"] == "scores"
    assert manifest["inputs"][0]["shape"] == ["batch", 3, "height", "width"]
    code, _, err = run("quantize", "--artifacts", str(out), "--int8-cpu", "--calib", str(calib_dir(tmp_path)))
    assert code == 0, err
    with Segmenter.load(out, precision="int8") as segmenter:
        assert np.asarray(segmenter(np.zeros((33, 47, 3), np.uint8), color="rgb")).shape == (33, 47)
    # its FP32 ONNX is the reference: verify skips it as --against onnx does, and says so
    report = verify_artifacts(VerifyRequest(artifacts=out, data="random", limit=1))
    status = {a.file: (a.status, a.reason) for a in report.artifacts}
    assert status["model.onnx"][0] == "skipped" and "--from-onnx" in str(status["model.onnx"][1])
    assert status["model.int8-cpu.onnx"][0] == "passed" and report.passed


# ------------------------------------------------------------------ bad input: one line, nothing written


def _factory_file(tmp_path: Path, body: str) -> str:
    path = tmp_path / "user.py"
    path.write_text("import torch\nfrom torch import nn\nimport torch.nn.functional as F\n" + body)
    return f"{path}:build"


BAD_FACTORIES = {
    "raises": (
        "def build():\n    raise ValueError('no such backbone')\n",
        "the factory raised ValueError: no such backbone",
    ),
    "non-module": ("def build():\n    return 42\n", "returned a int, not an nn.Module"),
    "missing argument": (
        "def build(depth):\n    return nn.Conv2d(3, 2, 1)\n",
        "missing 1 required positional argument",
    ),
    "forward fails": (
        "class M(nn.Module):\n    def forward(self, x):\n        return x.view(7, -1)\n"
        "def build():\n    return M()\n",
        "forward failed at 1x3x64x64: RuntimeError",
    ),
    "no class axis": (
        "class M(nn.Module):\n    def forward(self, x):\n        return x.mean()\n"
        "def build():\n    return M()\n",
        "no output has a class axis",
    ),
    "several candidates": (
        "class M(nn.Module):\n    def forward(self, x):\n        return {'a': x, 'b': x * 2}\n"
        "def build():\n    return M()\n",
        "several outputs could hold the class scores",
    ),
    "dropout left on": (
        "class M(nn.Module):\n    def forward(self, x):\n        return F.dropout(x, 0.5, training=True)\n"
        "def build():\n    return M()\n",
        "not deterministic in eval mode",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FACTORIES))
def test_a_bad_factory_is_one_line_and_writes_nothing(tmp_path: Path, case: str) -> None:
    body, pattern = BAD_FACTORIES[case]
    out = tmp_path / "out"
    code, _, err = run("onnx", "--model", _factory_file(tmp_path, body), "--size", "64x64", "--out", str(out))
    assert_one_line_error(code, err, pattern, after_progress=True)
    assert not out.exists()


@pytest.mark.parametrize(
    ("target", "pattern"),
    [
        ("notes.txt:build", "is not a .py file"),
        ("no_such_pkg_i24.mod:build", "cannot import no_such_pkg_i24.mod"),
    ],
)
def test_a_factory_that_is_not_python_is_refused(tmp_path: Path, target: str, pattern: str) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    target = str(tmp_path / target) if target.startswith("notes") else target
    code, _, err = run("onnx", "--model", target, "--size", "64x64", "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, pattern)
    assert not (tmp_path / "o").exists()


def _graph(inputs: list[onnx.ValueInfoProto], nodes: list[onnx.NodeProto], path: Path) -> Path:
    out = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 8, 8])
    model = onnx.helper.make_model(
        onnx.helper.make_graph(nodes, "g", inputs, [out]), opset_imports=[onnx.helper.make_opsetid("", 18)]
    )
    onnx.save(model, str(path))
    return path


def _image(name: str, elem: int = onnx.TensorProto.FLOAT, channels: int | str = 3) -> onnx.ValueInfoProto:
    return onnx.helper.make_tensor_value_info(name, elem, [1, channels, 8, 8])


BAD_ONNX = {
    "two image inputs": (
        lambda: [_image("a"), _image("b")],
        [onnx.helper.make_node("Add", ["a", "b"], ["y"])],
        "expected one image input, found 2",
    ),
    "dynamic channels": (
        lambda: [_image("a", channels="c")],
        [onnx.helper.make_node("Relu", ["a"], ["y"])],
        "expected [N, 3, H, W]",
    ),
    "integer input": (
        lambda: [_image("a", onnx.TensorProto.INT64)],
        [onnx.helper.make_node("Relu", ["a"], ["y"])],
        "is INT64, expected float32",
    ),
    "unknown op": (
        lambda: [_image("a")],
        [onnx.helper.make_node("NoSuchOp", ["a"], ["y"], domain="i24.custom")],
        "ONNX Runtime cannot run it",
    ),
}


@pytest.mark.parametrize("case", list(BAD_ONNX))
def test_a_bad_onnx_is_one_line_and_writes_nothing(tmp_path: Path, case: str) -> None:
    inputs, nodes, pattern = BAD_ONNX[case]
    path = _graph(inputs(), nodes, tmp_path / "bad.onnx")
    code, _, err = run("onnx", "--from-onnx", str(path), "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, pattern)
    assert not (tmp_path / "o").exists()


def test_a_from_onnx_path_that_is_not_onnx_is_refused(tmp_path: Path) -> None:
    for name, data in (("x.txt", b"hello"), ("x.onnx", b"\xff\x00 not protobuf")):
        (tmp_path / name).write_bytes(data)
        code, _, err = run("onnx", "--from-onnx", str(tmp_path / name), "--out", str(tmp_path / "o"))
        assert_one_line_error(code, err, "--from-onnx")
    assert not (tmp_path / "o").exists()


def test_upsampled_scores_match_the_module(tmp_path: Path) -> None:
    """The graph's bilinear upsample is the one `F.interpolate` computes (align_corners=False)."""
    torch.manual_seed(0)
    model = Quarter().eval()
    manifest = segexport.export(model, size=(64, 64), out=tmp_path / "a")  # type: ignore[operator]
    image = torch.randn(1, 3, 64, 64)
    expected = F.interpolate(model(image)["logits"], size=(64, 64), mode="bilinear", align_corners=False)
    from segexport.runtime import OnnxRuntimeRunner

    got = OnnxRuntimeRunner(tmp_path / "a" / "model.onnx").infer({"image": image.numpy()})["logits"]
    assert manifest["source"]["normalisation_assumed"] is True
    assert np.linalg.norm(got - expected.detach().numpy()) / np.linalg.norm(expected.detach().numpy()) < 1e-5
