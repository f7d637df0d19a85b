"""Triton Inference Server model repositories from a segexport artifact, and their offline check.

`write_repository` turns one artifact file (an ONNX of any precision, or a TensorRT engine)
into `REPO/NAME/config.pbtxt` + `REPO/NAME/1/model.onnx|model.plan`, optionally with a
three-step ensemble (Python-backend pre-processing -> network -> Python-backend
post-processing) that takes raw uint8 images of any size and returns masks at that size.

Configs are `ModelConfig` protobufs (Triton's own schema, from `tritonclient`) rendered with
protobuf's text format, so a field or enum Triton does not know fails here, not at load time.
`check_repository` re-reads what was written and checks what parsing cannot: I/O against the
model file, `max_batch_size` against the artifact's range or the engine's profile, accelerator
keys against the ONNX Runtime backend's list, and the ensemble's wiring.

Modules: `config` (the schema, names and types, the network's config), `repository` (writing,
the `triton` stage) and `check` (the offline check). The Python-backend steps copied into
repositories are in `segexport/serving/triton_models/`.
"""

from __future__ import annotations

from segexport.serving.triton.check import (
    check_accelerators,
    check_against_onnx,
    check_against_record,
    check_batch,
    check_ensemble,
    check_model,
    check_repository,
)
from segexport.serving.triton.config import (
    FORMATS,
    MODEL_FILES,
    ORT_PRECISION_MODES,
    ORT_TENSORRT_KEYS,
    ORT_TRT_PRECISIONS,
    SIDECAR,
    TRITON_TYPES,
    VERSION,
    Served,
    TritonRequest,
    import_tritonclient,
    model_config_module,
    network_config,
    network_file,
    ort_tensorrt_parameters,
    parse_config,
    render_config,
    served_size,
)
from segexport.serving.triton.repository import (
    check_name,
    check_options,
    choose_max_batch,
    default_name,
    describe_served,
    ensemble_configs,
    sidecar_record,
    vendor_runtime,
    write_repository,
)

__all__ = [
    "FORMATS",
    "MODEL_FILES",
    "ORT_PRECISION_MODES",
    "ORT_TENSORRT_KEYS",
    "ORT_TRT_PRECISIONS",
    "SIDECAR",
    "TRITON_TYPES",
    "VERSION",
    "Served",
    "TritonRequest",
    "check_accelerators",
    "check_against_onnx",
    "check_against_record",
    "check_batch",
    "check_ensemble",
    "check_model",
    "check_name",
    "check_options",
    "check_repository",
    "choose_max_batch",
    "default_name",
    "describe_served",
    "ensemble_configs",
    "import_tritonclient",
    "model_config_module",
    "network_config",
    "network_file",
    "ort_tensorrt_parameters",
    "parse_config",
    "render_config",
    "served_size",
    "sidecar_record",
    "vendor_runtime",
    "write_repository",
]
