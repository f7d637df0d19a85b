"""Which INT8 arithmetic this CPU's ONNX Runtime kernels do, found by running them.

x86 CPUs with AVX2 (or AVX-512 without VNNI) multiply UINT8 activations by INT8 weights
with `vpmaddubsw`, which adds each pair of products into a saturating 16-bit sum: two
products of 255 x 127 overflow it. VNNI (AVX-512 VNNI, AVX-VNNI, AMX) accumulates in 32
bits, exactly. So an `int8-cpu` graph quantized with full-range weights on a VNNI machine
loses accuracy on an AVX2 one (ONNX Runtime's quantization guide: use reduce-range, 7-bit
weights, there; then 2 x 255 x 64 < 2^15 and the kernels are exact on both).

The check runs ONNX Runtime itself on a one-convolution Q/DQ graph whose exact answer a
saturating kernel cannot give, so it reports what the kernels do (whatever the CPU flags,
ONNX Runtime build or emulator say); /proc/cpuinfo's flags are kept for the record only.
The runtime cannot import `onnx`, so the probe graph is written as protobuf bytes here.
"""

from __future__ import annotations

import functools
import struct
from pathlib import Path
from typing import Any

import numpy as np

from segexport.runtime.files import CPU_INT8_ONNX

CPU_ISAS = ("vnni", "avx2")
ISA_MEANING = {
    "vnni": "INT8 products accumulated exactly (AVX-512 VNNI, AVX-VNNI, AMX or not x86)",
    "avx2": "pairs of UINT8 x INT8 products saturate at 16 bits (AVX2, AVX-512 without VNNI)",
}
_FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp")

# The probe: x (1x64x1x1, all 2.55) -> Q/DQ (scale 0.01, UINT8: 255) -> Conv with 64 weights of
# 127 (INT8, scale 0.01) -> Q/DQ (scale 1) -> y. Exactly 255 x 127 x 64 x 1e-4 = 207.264 -> 207;
# a kernel that saturates each pair at 32767 gives 32 x 32767 x 1e-4 = 104.85 -> 105.
_CHANNELS = 64
_EXACT = 207.0


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes | int) -> bytes:
    if isinstance(payload, int):
        return _varint(number << 3) + _varint(payload)
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _tensor(name: str, data_type: int, raw: bytes, dims: tuple[int, ...] = ()) -> bytes:
    # TensorProto: dims 1, data_type 2, name 8, raw_data 9.
    return (
        b"".join(_field(1, d) for d in dims)
        + _field(2, data_type)
        + _field(8, name.encode())
        + _field(9, raw)
    )


def _value_info(name: str, dims: tuple[int, ...]) -> bytes:
    # ValueInfoProto{name 1, type 2{tensor_type 1{elem_type 1, shape 2{dim 1{dim_value 1}}}}}
    shape = b"".join(_field(1, _field(1, d)) for d in dims)
    return _field(1, name.encode()) + _field(2, _field(1, _field(1, 1) + _field(2, shape)))


def _node(op_type: str, inputs: tuple[str, ...], output: str) -> bytes:
    # NodeProto: input 1, output 2, name 3, op_type 4.
    return (
        b"".join(_field(1, i.encode()) for i in inputs)
        + _field(2, output.encode())
        + _field(3, output.encode())
        + _field(4, op_type.encode())
    )


def probe_model() -> bytes:
    """The probe graph as ONNX bytes (IR 7, opset 13)."""
    float32, uint8, int8 = 1, 2, 3
    initializers = [
        _tensor("scale", float32, struct.pack("<f", 0.01)),
        _tensor("zero_u8", uint8, b"\x00"),
        _tensor("zero_i8", int8, b"\x00"),
        _tensor("weight", int8, bytes([127]) * _CHANNELS, (1, _CHANNELS, 1, 1)),
        _tensor("one", float32, struct.pack("<f", 1.0)),
    ]
    nodes = [
        _node("QuantizeLinear", ("x", "scale", "zero_u8"), "xq"),
        _node("DequantizeLinear", ("xq", "scale", "zero_u8"), "xd"),
        _node("DequantizeLinear", ("weight", "scale", "zero_i8"), "wd"),
        _node("Conv", ("xd", "wd"), "c"),
        _node("QuantizeLinear", ("c", "one", "zero_u8"), "cq"),
        _node("DequantizeLinear", ("cq", "one", "zero_u8"), "y"),
    ]
    graph = (
        b"".join(_field(1, n) for n in nodes)
        + _field(2, b"cpu_isa_probe")
        + b"".join(_field(5, t) for t in initializers)
        + _field(11, _value_info("x", (1, _CHANNELS, 1, 1)))
        + _field(12, _value_info("y", (1, 1, 1, 1)))
    )
    opset = _field(1, b"") + _field(2, 13)
    return _field(1, 7) + _field(8, opset) + _field(7, graph)


@functools.cache
def detect_cpu_isa() -> str:
    """'avx2' when this machine's ONNX Runtime INT8 convolution saturates, else 'vnni'."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(probe_model(), options, providers=["CPUExecutionProvider"])
    feed = np.full((1, _CHANNELS, 1, 1), 2.55, np.float32)
    value = float(np.asarray(session.run(None, {"x": feed})[0]).ravel()[0])
    return "vnni" if value == _EXACT else "avx2"


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """The INT8-relevant flags the kernel lists (empty where there is no /proc/cpuinfo)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            present = set(value.split())
            return [flag for flag in _FLAGS_OF_INTEREST if flag in present]
    return []


def resolve_cpu_isa(requested: str) -> str:
    """`auto` becomes what this machine's kernels do; an explicit target is kept."""
    if requested == "auto":
        return detect_cpu_isa()
    if requested not in CPU_ISAS:
        from segexport.errors import SegexportError

        raise SegexportError(f"--cpu-isa {requested!r}: use auto or one of {', '.join(CPU_ISAS)}")
    return requested


def int8_cpu_mismatch(manifest: dict[str, Any], file_name: str) -> str | None:
    """Why an `int8-cpu` graph may not behave here as it did when it was verified, or None."""
    if file_name != CPU_INT8_ONNX:
        return None
    target = manifest.get("precisions", {}).get("int8-cpu", {}).get("cpu_isa", {}).get("target")
    if target is None:
        target = "vnni"  # graphs made before the target was recorded used full-range weights
    here = detect_cpu_isa()
    if target == here:
        return None
    if target == "vnni":
        return (
            f"{file_name} was quantized for VNNI CPUs (full-range weights) but this CPU's INT8 "
            "kernels saturate (AVX2 without VNNI): expect lower accuracy than verified; re-quantize "
            "here or with `segexport quantize --int8-cpu --cpu-isa avx2`"
        )
    return (
        f"{file_name} was quantized for AVX2 CPUs (7-bit weights); it is exact on this VNNI CPU too, "
        "but `segexport quantize --int8-cpu --cpu-isa vnni` keeps one more bit of weight precision"
    )
