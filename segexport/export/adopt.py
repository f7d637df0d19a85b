"""`segexport onnx --from-onnx FILE`: an ONNX made elsewhere, adopted as a segexport artifact.

The file must be an image -> per-class-scores graph: one float NCHW input with 3 channels, an
output [B, K, H/s, W/s]. Fixed batch/height/width are made dynamic and kept so only where the
graph really runs and answers at the input's size at other shapes; the simplified graph is
checked against the adopted one at >= 3 shapes; the adopted FP32 ONNX is the reference of
every later stage (no PyTorch model exists to rerun).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from segexport import readiness
from segexport.compare import Tolerance
from segexport.errors import SegexportError, VerificationError, first_line
from segexport.export.graph import simplify
from segexport.export.plan import ExportRequest, plan_export
from segexport.export.stage import MODEL_FILE, _manifest, take_raw_frames_checked
from segexport.importers import Preprocessing
from segexport.reference import verify_runners
from segexport.runtime import OnnxRuntimeRunner
from segexport.runtime.artifacts import describe_files, staged_directory, write_json_atomic
from segexport.runtime.preprocessing import DEFAULT_INPUT_FORMAT, graph_normalises
from segexport.shapes import InputShape
from segexport.sources.adapter import STRIDES
from segexport.zoo.registry import IMAGENET_MEAN, IMAGENET_STD, ModelSpec

INLINE_HINT = (
    "inline it first: python -c \"import onnx; m = onnx.load('IN.onnx'); "
    "onnx.save(m, 'OUT.onnx', save_as_external_data=False)\""
)


def _read(path: Path) -> onnx.ModelProto:
    if path.suffix != ".onnx" or not path.is_file():
        raise SegexportError(f"--from-onnx {path}: not an .onnx file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf's decode errors
        raise SegexportError(f"--from-onnx {path}: not an ONNX model ({first_line(error)})") from None
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        raise SegexportError(f"--from-onnx {path}: its weights are in external data files; {INLINE_HINT}")
    return proto


def _image_input(proto: onnx.ModelProto, path: Path) -> onnx.ValueInfoProto:
    initializers = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise SegexportError(f"--from-onnx {path}: expected one image input, found {len(inputs)} ({names})")
    tensor = inputs[0].type.tensor_type
    if tensor.elem_type != onnx.TensorProto.FLOAT:
        kind = onnx.TensorProto.DataType.Name(tensor.elem_type)
        raise SegexportError(f"--from-onnx {path}: input {inputs[0].name} is {kind}, expected float32 NCHW")
    dims = tensor.shape.dim
    if len(dims) != 4 or dims[1].dim_param or dims[1].dim_value != 3:
        shape = [d.dim_param or d.dim_value for d in dims]
        raise SegexportError(f"--from-onnx {path}: input {inputs[0].name} is {shape}, expected [N, 3, H, W]")
    return inputs[0]


def _scores_output(proto: onnx.ModelProto, output_key: str | None, path: Path) -> str:
    outputs = [o for o in proto.graph.output if len(o.type.tensor_type.shape.dim) == 4]
    if output_key is not None:
        if output_key not in [o.name for o in proto.graph.output]:
            names = ", ".join(o.name for o in proto.graph.output)
            raise SegexportError(f"--output-key {output_key}: the graph's outputs are {names}")
        return output_key
    if len(outputs) == 1:
        return outputs[0].name
    found = [o.name for o in outputs]
    for preferred in ("logits", "out"):
        if preferred in found:
            return preferred
    if not outputs:
        raise SegexportError(f"--from-onnx {path}: no output has a class axis [B, K, H, W]")
    raise SegexportError(
        f"--from-onnx {path}: several outputs could hold the class scores ({', '.join(found)}); "
        "pass --output-key"
    )


def _make_dynamic(proto: onnx.ModelProto, image: onnx.ValueInfoProto) -> None:
    """Input named `image` (what every stage feeds); batch, height and width symbolic on it and
    every output; stale shape facts dropped."""
    old = image.name
    if old != "image":
        for node in proto.graph.node:
            for index, name in enumerate(node.input):
                if name == old:
                    node.input[index] = "image"
        image.name = "image"
    for index, name in ((0, "batch"), (2, "height"), (3, "width")):
        image.type.tensor_type.shape.dim[index].dim_param = name
    for output in proto.graph.output:
        for index, dim in enumerate(output.type.tensor_type.shape.dim):
            if index != 1:  # the class axis stays fixed
                dim.dim_param = "batch" if index == 0 else f"{output.name}_{index}"
    del proto.graph.value_info[:]


def _runs(runner: OnnxRuntimeRunner, name: str, output: str, shape: InputShape) -> tuple[int, ...] | None:
    assert shape.height and shape.width
    image = np.random.default_rng(0).standard_normal((shape.batch, 3, shape.height, shape.width), np.float32)
    try:
        return tuple(runner.infer({name: image})[output].shape)
    except Exception:  # ONNX Runtime's errors: the graph does not run at this shape
        return None


def adopt_onnx(
    path: Path,
    *,
    classes: list[str] | None = None,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    output_key: str | None = None,
    size: tuple[int, int] | None = None,
    out: Path | None = None,
    force: bool = False,
    max_rel_l2: float = 1e-4,
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
    input_format: str = DEFAULT_INPUT_FORMAT,
) -> dict[str, Any]:
    """Adopt `path` as an artifact (see the module's docstring); returns the manifest."""
    say = progress or (lambda _message: None)
    started = time.perf_counter()
    proto = _read(path)
    image = _image_input(proto, path)
    output = _scores_output(proto, output_key, path)
    dims = image.type.tensor_type.shape.dim
    fixed = (dims[2].dim_value, dims[3].dim_value)
    size = size or (fixed if all(fixed) else None)
    if size is None:
        raise SegexportError(f"--from-onnx {path}: the input's size is dynamic; pass --size HxW")
    try:
        OnnxRuntimeRunner(proto.SerializeToString(), threads=threads)
    except Exception as error:  # ops ONNX Runtime cannot run, a broken graph
        raise SegexportError(
            f"--from-onnx {path}: ONNX Runtime cannot run it ({first_line(error)})"
        ) from None
    original_input = image.name
    _make_dynamic(proto, image)
    runner = OnnxRuntimeRunner(proto.SerializeToString(), threads=threads)
    at_size = _runs(runner, image.name, output, InputShape(1, *size))
    if at_size is None or size[0] % at_size[2] or size[0] // at_size[2] != size[1] // at_size[3]:
        raise SegexportError(
            f"--from-onnx {path}: output {output} is {at_size} for a {size[0]}x{size[1]} input"
        )
    scale = size[0] // at_size[2]
    stride = _stride(runner, image.name, output, size, scale)
    say(
        f"adopting {path.name}: scores {output} ({at_size[1]} classes, 1/{scale} resolution), stride {stride}"
    )
    if stride is None:
        raise SegexportError(
            f"--from-onnx {path}: the graph answers only at {size[0]}x{size[1]} (sizes baked in at export); "
            "re-export it with dynamic height and width"
        )
    num_classes = at_size[1]
    names = tuple(classes) if classes else tuple(f"class_{i}" for i in range(num_classes))
    if len(names) != num_classes:
        raise SegexportError(f"--classes gives {len(names)} names; output {output} has {num_classes} classes")
    prep = Preprocessing(mean or IMAGENET_MEAN, std or IMAGENET_STD)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    spec = ModelSpec(
        f"onnx:{path.stem}",
        lambda **_: None,  # type: ignore[arg-type]
        "onnx",
        f"adopted from {path.name}",
        num_classes,
        tuple(o.name for o in proto.graph.output),
        default_size=size,
        stride=stride,
        min_size=(min(64, size[0]), min(64, size[1])),
        max_size=(max(1024, size[0]), max(1024, size[1])),
        mean=prep.mean,
        std=prep.std,
        logits_outputs=(output,),
    )
    source = {
        "kind": "onnx",
        "path": str(path.resolve()),
        "sha256": digest,
        "input": original_input,
        "output": output,
        "scale": scale,
        "normalisation_assumed": mean is None,
        "classes_from": "given" if classes else "numbered (none given)",
    }
    request = ExportRequest(
        None,
        num_classes=num_classes,
        size=size,
        out_dir=out,
        force=force,
        spec=spec,
        tolerance=Tolerance(max_rel_l2=max_rel_l2),
        threads=threads,
        source=source,
        class_names=names,
        preprocessing=prep,
        input_format=input_format,
    )
    plan = plan_export(request)
    with staged_directory(plan.out_dir, force, artifacts_only=True) as staging:
        say("simplifying with onnxsim")
        simplified, note = simplify(proto)
        onnx.save(simplified, str(staging / MODEL_FILE))
        say(f"checking the simplified graph against the adopted one at {len(plan.verify_shapes)} shapes")
        report = verify_runners(
            spec,
            num_classes,
            runner,
            OnnxRuntimeRunner(staging / MODEL_FILE, threads=threads),
            plan.verify_shapes,
            request.tolerance,
            progress=lambda m: say(f"      {m}"),
        )
        frames = None
        if report.passed and graph_normalises(input_format):
            say("taking raw frames (uint8 NHWC, normalised in the graph)")
            simplified, frames = take_raw_frames_checked(plan, request, simplified, staging / MODEL_FILE)
        seconds = {"total": round(time.perf_counter() - started, 2)}
        manifest = _manifest(plan, request, simplified, proto, note, report, seconds)
        if frames is not None:  # the raw-frame graph against the adopted graph it wraps
            manifest["verification"]["frames"] = frames.to_dict()
        manifest["onnx"]["exporter"] = f"adopted ({path.name})"
        if not report.passed:
            raise VerificationError(
                f"{path}: does not run alike at every shape; " + " | ".join(report.failures()[:3])
            )
        manifest["files"] = describe_files(staging, [MODEL_FILE])
        manifest["trt_readiness"] = readiness.check_artifacts(staging, "all", manifest)
        write_json_atomic(staging / "manifest.json", manifest)
    return manifest


def _stride(
    runner: OnnxRuntimeRunner, name: str, output: str, size: tuple[int, int], scale: int
) -> int | None:
    """The smallest stride whose other sizes (and batch 2) run and keep output = input / scale."""
    for stride in STRIDES:
        if stride % scale or size[0] % stride or size[1] % stride:
            continue
        height, width = (stride * (2 * max(1, round(side / stride / 2)) + 1) for side in size)
        got = _runs(runner, name, output, InputShape(2, height, width))
        if got is not None and got[0] == 2 and got[2:] == (height // scale, width // scale):
            return stride
    return None
