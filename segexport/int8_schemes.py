"""The INT8 schemes: where Q/DQ goes and how activations are encoded, for TensorRT (`model.int8.onnx`)
and for ONNX Runtime's x86 kernels (`model.int8-cpu.onnx`). `segexport.precision` applies them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# Explicit quantization as TensorRT expects it: Q/DQ on the inputs of compute ops only.
QUANTIZED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


@dataclass(frozen=True)
class Int8Scheme:
    """Where Q/DQ goes and how activations are encoded; weights are always symmetric per-channel INT8.

    `inputs_only`: Q/DQ only where a quantized op reads it, as TensorRT's placement guidance
    asks (quantize the inputs of weighted ops, not their outputs); every other reader of a
    quantized tensor (a residual Add, a layer kept float) reads the float tensor. It also
    keeps grouped convolutions whose channels per group TensorRT cannot run in INT8 float.
    """

    unsigned_activations: bool
    ops: tuple[str, ...]
    purpose: str
    inputs_only: bool = False
    reduce_range: bool = False
    # Ops whose outputs stay float although they read Q/DQ inputs (ORT's
    # OpTypesToExcludeOutputQuantization); `inputs_only` keeps every op's output float.
    float_outputs: tuple[str, ...] = ()
    # Quantize the data-movement ops in `ops` (Transpose, Resize, MaxPool, ...) even where their
    # input is float (ORT's ForceQuantizeNoInputCheck), so they move UINT8 instead of FP32.
    force_pass_through: bool = False
    # Rewrites of the FP32 graph before Q/DQ goes in (names in segexport.cpu_graph.GRAPH_REWRITES).
    graph_rewrites: tuple[str, ...] = ()
    # Rewrites of the chosen Q/DQ graph into fused kernels (names in segexport.cpu_graph.QDQ_REWRITES).
    qdq_rewrites: tuple[str, ...] = ()

    @property
    def compute_ops(self) -> tuple[str, ...]:
        """The weighted ops among `ops`: the layers the sensitivity fallback may keep float."""
        return tuple(op for op in self.ops if op in QUANTIZED_OPS)


INT8_SCHEMES = {
    # TensorRT: signed INT8 with zero point 0 everywhere (the only Q/DQ it accepts).
    "int8": Int8Scheme(False, QUANTIZED_OPS, "TensorRT (symmetric INT8, zero point 0)", inputs_only=True),
    # ONNX Runtime on x86: asymmetric UINT8 activations let a Relu/Clip before a Q fold into the
    # zero point and hit the U8S8 (VNNI) kernels. MatMul is quantized with float outputs: ONNX
    # Runtime fuses DQ -> MatMul into MatMulIntegerToFloat, and the attention Softmax then reads
    # float (a quantized MatMul output made it a QLinearSoftmax, 17 % of segformer-b0's time).
    # ConvTranspose becomes a 1x1 Conv and a channels-last depth-to-space (no integer
    # ConvTranspose kernel on the CPU), token maps are built channels-last, GELU is one fused
    # kernel, Concat inputs share one scale, a Linear's bias goes inside its integer MatMul
    # (segexport.cpu_graph), and the data-movement ops between integer ops (Reshape among them,
    # for the depth-to-space) take Q/DQ so that they move UINT8. Relu and Clip are listed so
    # that the tooling folds them into the producer's Q (its QDQRemovableActivation: the Conv's
    # output takes the activation's range); unlisted, each Conv -> Relu pair ran as
    # Q -> DQ -> Relu -> Q, a requantisation per layer (unet-small 1.48x -> 1.76x FP32,
    # deeplabv3plus 2.33x -> 2.68x, agreement 99.61 -> 99.71 % and 99.55 -> 99.71 %).
    "int8-cpu": Int8Scheme(
        True,
        (
            "Conv",
            "MatMul",
            "Concat",
            "MaxPool",
            "Resize",
            "Transpose",
            "Reshape",
            "DepthToSpace",
            "Relu",
            "Clip",
        ),
        "ONNX Runtime on x86 CPUs (asymmetric UINT8)",
        float_outputs=("MatMul",),
        graph_rewrites=("depth-to-space", "channels-last-tokens", "fused-gelu", "shared-concat-scales"),
        qdq_rewrites=("matmul-bias-in-kernel", "shapes-of-quantized-tensors"),
    ),
}


def int8_cpu_scheme(cpu_isa: str) -> Int8Scheme:
    """The CPU scheme for a target's INT8 arithmetic (segexport.runtime.cpu_isa): without VNNI,
    7-bit weights keep every pair of UINT8 x INT8 products inside the kernels' 16-bit sums."""
    base = INT8_SCHEMES["int8-cpu"]
    if cpu_isa == "vnni":
        return dataclasses.replace(base, purpose=f"{base.purpose}, full-range weights for VNNI")
    return dataclasses.replace(base, purpose=f"{base.purpose}, 7-bit weights for AVX2", reduce_range=True)
