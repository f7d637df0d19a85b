"""Real libraries' segmentation models through the Python door (random weights, small sizes).

Each: export -> quantize (--fp16 --int8 --int8-cpu) -> Segmenter at an odd image size ->
verify with the module, and rel L2 of the FP32 ONNX vs the library's own forward <= 1e-4.
torchvision imports through `tests/source_libraries.py`'s stub (platform notes). Slow-marked
(`make test` runs them, `make test-fast` does not): at 64x64 each takes some 5-50 CPU seconds;
run them one at a time (`-n 0 -s` prints what the probe decided and the seconds of each stage).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import segexport
from segexport.errors import SegexportError
from segexport.quantize import QuantizeRequest, quantize_artifact
from segexport.runtime import OnnxRuntimeRunner, Segmenter
from segexport.sources.adapter import select
from segexport.verify import VerifyRequest, verify_artifacts
from tests.source_libraries import source_library
from tests.test_your_model import calib_dir


def _torchvision(name: str) -> nn.Module:
    segmentation = source_library("torchvision.models.segmentation")
    return getattr(segmentation, name)(weights=None, weights_backbone=None, num_classes=5)


def _smp(name: str, encoder: str) -> nn.Module:
    smp = source_library("segmentation_models_pytorch")
    return getattr(smp, name)(encoder, encoder_weights=None, classes=5)


def _upernet() -> nn.Module:
    transformers = source_library("transformers")
    backbone = transformers.ConvNextConfig(
        depths=[1, 1, 1, 1],
        hidden_sizes=[16, 32, 64, 128],
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = transformers.UperNetConfig(
        backbone_config=backbone, hidden_size=32, auxiliary_in_channels=64, num_labels=5
    )
    return transformers.UperNetForSemanticSegmentation(config)


def _segformer() -> nn.Module:
    """A ModelOutput whose logits are at 1/4 of the input (kept so: `upsample="none"`)."""
    transformers = source_library("transformers")
    config = transformers.SegformerConfig(
        depths=[1, 1, 1, 1],
        hidden_sizes=[16, 32, 64, 128],
        num_attention_heads=[1, 1, 2, 4],
        decoder_hidden_size=64,
        num_labels=5,
    )
    return transformers.SegformerForSemanticSegmentation(config)


def _mobilevit() -> nn.Module:
    transformers = source_library("transformers")
    config = transformers.MobileViTConfig(
        hidden_sizes=[32, 40, 48],
        neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64],
        num_labels=5,
        aspp_out_channels=32,
    )
    return transformers.MobileViTForSemanticSegmentation(config)


def _seed_deeplab() -> nn.Module:
    from examples.my_model import build

    return build(num_classes=5)


MODELS: dict[str, tuple[Callable[[], nn.Module], dict[str, Any]]] = {
    "tv-lraspp": (lambda: _torchvision("lraspp_mobilenet_v3_large"), {}),
    "tv-deeplabv3-mbv3": (lambda: _torchvision("deeplabv3_mobilenet_v3_large"), {}),
    "tv-fcn-resnet50": (lambda: _torchvision("fcn_resnet50"), {}),
    "smp-unet-resnet18": (lambda: _smp("Unet", "resnet18"), {}),
    "smp-deeplabv3plus-resnet18": (lambda: _smp("DeepLabV3Plus", "resnet18"), {}),
    "smp-fpn-mobilenet_v2": (lambda: _smp("FPN", "mobilenet_v2"), {}),
    "hf-upernet-convnext": (_upernet, {}),
    "hf-segformer-quarter-logits": (_segformer, {"upsample": "none"}),
    "seed-deeplabv3plus-user-backbone": (_seed_deeplab, {}),
}


SIZE = (64, 64)  # the smallest most models here take (stride 32 leaves a 2x2 bottleneck)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_a_library_model_goes_through_every_stage(tmp_path: Path, name: str) -> None:
    build, options = MODELS[name]
    torch.manual_seed(0)
    model = build().eval()
    out = tmp_path / name
    started, cpu = time.perf_counter(), time.process_time()  # CPU seconds: the machine is shared
    manifest = segexport.export(model, size=SIZE, out=out, max_size=(256, 256), max_batch=2, **options)  # type: ignore[operator]
    image = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(1))
    choice = manifest["source"]["probe"]["output"]
    with torch.inference_mode():
        theirs = select(model(image), choice["selector"])
    if choice["upsample"] == "bilinear" and choice["scale"] > 1:
        theirs = torch.nn.functional.interpolate(theirs, size=SIZE, mode="bilinear", align_corners=False)
    ours = OnnxRuntimeRunner(out / "model.onnx").infer({"image": image.numpy()})["logits"]
    expected = theirs.numpy()
    rel_l2 = float(np.linalg.norm(ours - expected) / np.linalg.norm(expected))
    assert rel_l2 <= 1e-4
    exported = time.perf_counter()
    # The default calibration (percentile); min_agreement 0: random weights agree poorly and
    # the per-layer search that would follow is quantize's own test, not this one's.
    quantized_manifest = quantize_artifact(
        QuantizeRequest(
            artifacts=out,
            fp16=True,
            int8=True,
            int8_cpu=True,
            calib=str(calib_dir(tmp_path, count=2)),
            eval_images=1,
            min_agreement=0.0,
        )
    )
    quantized = time.perf_counter()
    if name.startswith("hf-segformer"):  # the int8-cpu graph's layout rewrite finds Hugging Face's token maps
        int8_cpu = onnx.load(str(out / "model.int8-cpu.onnx"))
        assert any(node.name.endswith(".nhwc") for node in int8_cpu.graph.node)
    with Segmenter.load(out) as segmenter:
        assert np.asarray(segmenter(np.zeros((97, 131, 3), np.uint8), color="rgb")).shape == (97, 131)
    report = verify_artifacts(
        VerifyRequest(artifacts=out, data="random", limit=1, precision="fp32", module=model)
    )
    assert report.passed
    probe = manifest["source"]["probe"]
    narrow = quantized_manifest["precisions"]["int8"]["calibration"]["minmax_fallback"]
    print(
        f"\n{name}: stride {probe['stride']} (rejected {probe['onnx_stride_check']['rejected']}), "
        f"output {choice}, {probe['num_classes']} classes ({manifest['source']['classes_from']}), "
        f"rel L2 {rel_l2:.1e}; percentile fell back to min/max on {len(narrow)} tensors; seconds: "
        f"export {exported - started:.0f}, quantize {quantized - exported:.0f}, "
        f"run+verify {time.perf_counter() - quantized:.0f}; CPU {time.process_time() - cpu:.0f}"
    )


@pytest.mark.slow
def test_mobilevit_is_refused_with_the_reason(tmp_path: Path) -> None:
    """MobileViT's patch arithmetic is fixed in the exported graph (torch.export specialises
    it), so its ONNX fails at any other size: the stride check on the ONNX refuses it."""
    torch.manual_seed(0)
    with pytest.raises(SegexportError, match="does not hold at sizes off a multiple") as refused:
        segexport.export(
            _mobilevit().eval(), size=SIZE, out=tmp_path / "m", max_size=(256, 256), upsample="none"
        )  # type: ignore[operator]
    assert "\n" not in str(refused.value) and not (tmp_path / "m").exists()
