"""Weights from elsewhere (Hugging Face, mmseg, timm, popular ports) import exactly, or are refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from segexport.compare import Tolerance
from segexport.errors import SegexportError
from segexport.importers import build_imported, import_weights
from segexport.importers.check import check_import
from tests.clitools import assert_one_line_error, run
from tests.source_libraries import source_library

CLASSES = ("road", "car", "person", "sky")


def _randomise_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics, so a mapping that drops or swaps them is caught."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(torch.randn(size, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)


def hf_segformer(variant: str = "b0", seed: int = 0) -> Any:
    transformers = source_library("transformers")
    sizes = {
        "b0": {"hidden_sizes": [32, 64, 160, 256], "depths": [2, 2, 2, 2], "decoder_hidden_size": 256},
        "b2": {"hidden_sizes": [64, 128, 320, 512], "depths": [3, 4, 6, 3], "decoder_hidden_size": 768},
    }[variant]
    config = transformers.SegformerConfig(
        num_labels=len(CLASSES),
        id2label=dict(enumerate(CLASSES)),
        label2id={name: index for index, name in enumerate(CLASSES)},
        **sizes,
    )
    torch.manual_seed(seed)
    model = transformers.SegformerForSemanticSegmentation(config).eval()
    _randomise_batchnorm(model, seed)
    return model


def save_hf(model: Any, directory: Path, size: int = 64) -> Path:
    model.save_pretrained(directory)
    preprocessor = {
        "image_processor_type": "SegformerImageProcessor",
        "do_normalize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "image_mean": [0.5, 0.4, 0.3],
        "image_std": [0.2, 0.25, 0.3],
        "size": {"height": size, "width": size},
    }
    (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return directory


def hf_logits(model: Any, image: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        logits = model(pixel_values=image).logits
        full = torch.nn.functional.interpolate(
            logits, size=image.shape[2:], mode="bilinear", align_corners=False
        )
    return full.numpy()


def rel_l2(reference: np.ndarray, candidate: np.ndarray) -> float:
    return float(np.linalg.norm(candidate - reference) / np.linalg.norm(reference))


# --------------------------------------------------------------------------- Hugging Face


@pytest.fixture(scope="module")
def hf_artifact(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path, Path]:
    """One HF SegFormer-B0 directory exported through `segexport onnx --weights DIR` (no --model)."""
    root = tmp_path_factory.mktemp("hf")
    source = hf_segformer("b0")
    directory = save_hf(source, root / "hub")
    out = root / "artifact"
    code, _, err = run("onnx", "--weights", str(directory), "--out", str(out))
    assert code == 0, err
    return source, directory, out


def test_hf_segformer_b0_exports_without_model_and_matches_transformers(
    hf_artifact: tuple[Any, Path, Path],
) -> None:
    import onnxruntime as ort

    source, _, out = hf_artifact
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["name"] == "segformer-b0"
    assert manifest["model"]["class_names"] == list(CLASSES)
    assert manifest["export_shape"] == "1x64x64"  # preprocessor_config.json's size
    assert manifest["preprocessing"]["mean"] == [0.5, 0.4, 0.3]
    assert manifest["preprocessing"]["std"] == [0.2, 0.25, 0.3]
    record = manifest["source"]
    assert record["format"] == "huggingface-segformer" and record["file"] == "model.safetensors"
    assert record["check"]["inverse_mapping"].startswith("exact")
    assert record["check"]["reference"]["against"].startswith("transformers")
    assert record["check"]["reference"]["rel_l2"] <= 1e-4

    image = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(None, {"image": image.numpy()})
    assert rel_l2(hf_logits(source, image), onnx_logits) <= 1e-4


def test_hf_artifact_goes_through_quantize_and_trt_unchanged(hf_artifact: tuple[Any, Path, Path]) -> None:
    _, _, out = hf_artifact
    code, _, err = run("trt", "--precision", "fp16", "--artifacts", str(out))
    # No TensorRT here: trt runs the earlier stages (FP16 ONNX, measured against the
    # imported PyTorch model rebuilt from the manifest) and stops with exit 3.
    assert code == 3, err
    assert "TensorRT is not importable here" in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precisions"]["fp16"]["agreement"] >= 0.99
    assert "model.fp16.onnx" in manifest["files"]


def test_reference_rebuild_refuses_changed_weights(
    hf_artifact: tuple[Any, Path, Path], tmp_path: Path
) -> None:
    from segexport.reference import reference_model

    _, _, out = hf_artifact
    manifest = json.loads((out / "manifest.json").read_text())
    reference_model(manifest)  # rebuilt from the directory it recorded, checksum matching
    changed = tmp_path / "changed"
    hf_segformer("b0", seed=5).save_pretrained(changed)
    manifest["model"]["weights"]["path"] = str(changed)
    with pytest.raises(SegexportError, match="missing or changed"):
        reference_model(manifest)


def test_hf_in_memory_layout_imports_like_the_hub_layout(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    source = hf_segformer("b0")
    hub = save_hf(source, tmp_path / "hub")
    memory = tmp_path / "memory"
    memory.mkdir()
    (memory / "config.json").write_text((hub / "config.json").read_text())
    names = source.state_dict()
    assert any(".stages." in key for key in names), "transformers 5 renamed its SegFormer modules"
    save_file({k: v.contiguous() for k, v in names.items()}, str(memory / "model.safetensors"))
    from_hub, from_memory = import_weights(hub), import_weights(memory)
    assert from_hub is not None and from_memory is not None
    assert from_hub.state_dict.keys() == from_memory.state_dict.keys()
    assert all(torch.equal(from_hub.state_dict[k], from_memory.state_dict[k]) for k in from_hub.state_dict)
    model = build_imported(from_memory, {})
    record = check_import(from_memory, model, (64, 64), Tolerance())
    assert record["reference"]["rel_l2"] <= 1e-4


def test_hf_segformer_b2_matches_transformers(tmp_path: Path) -> None:
    source = hf_segformer("b2", seed=2)
    directory = tmp_path / "hub"
    source.save_pretrained(directory)
    imported = import_weights(directory)
    assert imported is not None and imported.model == "segformer-b2"
    assert imported.class_names == CLASSES and imported.preprocessing is None
    model = build_imported(imported, {})
    record = check_import(imported, model, (64, 64), Tolerance())
    assert record["reference"]["rel_l2"] <= 1e-4
    image = torch.randn(1, 3, 96, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = model(image).numpy()
    assert rel_l2(hf_logits(source, image), ours) <= 1e-4


@pytest.mark.slow
def test_hf_segformer_b2_exports(tmp_path: Path) -> None:
    directory = save_hf(hf_segformer("b2", seed=2), tmp_path / "hub")
    out = tmp_path / "artifact"
    code, _, err = run("onnx", "--weights", str(directory), "--out", str(out))
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["name"] == "segformer-b2"
    assert manifest["source"]["check"]["reference"]["rel_l2"] <= 1e-4


def test_model_that_disagrees_with_the_config_is_refused(tmp_path: Path) -> None:
    directory = save_hf(hf_segformer("b0"), tmp_path / "hub")
    code, _, err = run(
        "onnx", "--model", "segformer-b2", "--weights", str(directory), "--out", str(tmp_path / "o")
    )
    assert_one_line_error(
        code, err, "--model segformer-b2 disagrees with the weights, which are segformer-b0"
    )
    assert not (tmp_path / "o").exists()


def _refused(tmp_path: Path, weights: Path, message: str, after_progress: bool = False) -> None:
    out = tmp_path / "out"
    code, _, err = run("onnx", "--weights", str(weights), "--out", str(out))
    assert_one_line_error(code, err, message, after_progress=after_progress)
    assert not out.exists()


def test_hf_directory_of_another_architecture_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "upernet"
    directory.mkdir()
    config = {"model_type": "upernet", "architectures": ["UperNetForSemanticSegmentation"]}
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "model.safetensors").write_bytes(b"")
    _refused(tmp_path, directory, "a Hugging Face UperNetForSemanticSegmentation model; segexport imports")


def test_hf_config_weights_mismatch_is_refused(tmp_path: Path) -> None:
    directory = save_hf(hf_segformer("b0"), tmp_path / "hub")
    config = json.loads((directory / "config.json").read_text())
    config.update(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 6, 3], decoder_hidden_size=768)
    (directory / "config.json").write_text(json.dumps(config))
    _refused(tmp_path, directory, "does not fit SegFormer", after_progress=True)  # found while building


def test_truncated_safetensors_is_refused(tmp_path: Path) -> None:
    directory = save_hf(hf_segformer("b0"), tmp_path / "hub")
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    _refused(tmp_path, directory, "not a readable safetensors file")


def test_directory_without_config_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    _refused(tmp_path, tmp_path / "empty", "is a directory but not a model directory; expected")


def test_unknown_file_without_model_names_what_was_expected(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"some.weight": torch.zeros(2)}, path)
    _refused(tmp_path, path, "not a layout segexport recognises by itself (expected")


# --------------------------------------------------------------------------- timm ViT -> SETR


def timm_vit(class_token: bool = True, seed: int = 0) -> Any:
    vision_transformer = source_library("timm").models.vision_transformer
    torch.manual_seed(seed)
    model = vision_transformer.VisionTransformer(
        img_size=224,
        patch_size=16,
        embed_dim=64,
        depth=2,
        num_heads=1,
        class_token=class_token,
        global_pool="token" if class_token else "avg",
        fc_norm=False,
        num_classes=10,
        dynamic_img_size=True,  # timm resizes its position table per input only when asked
    )
    return model.eval()


def test_timm_vit_encoder_in_setr_matches_timm_tokens(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    source = timm_vit()
    path = tmp_path / "vit.safetensors"
    save_file(source.state_dict(), str(path))
    out = tmp_path / "artifact"
    code, _, err = run(
        "onnx", "--weights", str(path), "--num-classes", "3", "--size", "64x64", "--out", str(out)
    )
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["name"] == "setr"
    options = manifest["model"]["options"]
    assert options["class_token"] is True and options["img_size"] == 224  # the checkpoint's own grid
    assert manifest["source"]["partial"] and manifest["source"]["ignored"] == ["head.weight", "head.bias"]
    assert manifest["source"]["check"]["reference"]["rel_l2"] <= 1e-4
    assert manifest["preprocessing"]["mean"] == [0.5, 0.5, 0.5]

    imported = import_weights(path)
    assert imported is not None
    model = build_imported(imported, imported.options, 3)
    for size in ((224, 224), (64, 96), (320, 256)):
        image = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(size[0]))
        with torch.no_grad():
            ours = model.encode(image)[0].numpy()
            theirs = source.forward_features(image).numpy()
        assert ours.shape == theirs.shape  # class token kept through every layer
        assert rel_l2(theirs, ours) <= 1e-5, size


def test_timm_pooled_vit_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    vision_transformer = source_library("timm").models.vision_transformer
    source = vision_transformer.VisionTransformer(
        img_size=64, patch_size=16, embed_dim=64, depth=1, num_heads=1, global_pool="avg", num_classes=0
    )
    path = tmp_path / "vit.safetensors"
    save_file(source.state_dict(), str(path))
    _refused(tmp_path, path, "global-average-pool ViT (fc_norm)")


def test_setr_without_class_token_keeps_its_keys() -> None:
    from segexport.zoo import create_model

    plain = create_model("setr", num_classes=2, embed_dim=64, depth=1, num_heads=1)
    token = create_model("setr", num_classes=2, embed_dim=64, depth=1, num_heads=1, class_token=True)
    assert set(token.state_dict()) - set(plain.state_dict()) == {"cls_token"}
    assert plain.state_dict()["pos_embed"].shape[1] + 1 == token.state_dict()["pos_embed"].shape[1]


def test_antialiased_position_resize_is_torchs() -> None:
    from segexport.zoo.setr import antialiased_bicubic_matrix

    grid = torch.randn(1, 8, 14, 14, generator=torch.Generator().manual_seed(0))
    for height, width in ((14, 14), (4, 6), (32, 20), (40, 3)):
        expected = torch.nn.functional.interpolate(
            grid, size=(height, width), mode="bicubic", align_corners=False, antialias=True
        )
        rows = antialiased_bicubic_matrix(14, height, grid.dtype)
        cols = antialiased_bicubic_matrix(14, width, grid.dtype)
        assert torch.allclose(rows @ grid @ cols.T, expected, atol=1e-5)


# --------------------------------------------------------------------------- milesial, VainF, smp


class _MilesialDoubleConv(torch.nn.Module):
    """milesial's published module names: `double_conv` = conv(bias), BN, ReLU, conv(bias), BN, ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        nn = torch.nn
        self.double_conv = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class MilesialUNet(torch.nn.Module):
    """milesial's UNet(bilinear=False) module tree (inc, downN.maxpool_conv.1, upN.up/conv, outc.conv),
    written from its published structure to produce its state_dict names and outputs."""

    def __init__(self, classes: int, width: int) -> None:
        super().__init__()
        nn = torch.nn
        w = [width * 2**i for i in range(5)]
        self.inc = _MilesialDoubleConv(3, w[0])
        for k in range(1, 5):
            self.add_module(f"down{k}", nn.Module())
            getattr(self, f"down{k}").maxpool_conv = nn.Sequential(
                nn.MaxPool2d(2), _MilesialDoubleConv(w[k - 1], w[k])
            )
            up = nn.Module()
            up.up = nn.ConvTranspose2d(w[5 - k], w[4 - k], 2, stride=2)
            up.conv = _MilesialDoubleConv(w[5 - k], w[4 - k])
            self.add_module(f"up{k}", up)
        self.outc = nn.Module()
        self.outc.conv = nn.Conv2d(w[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(x)]
        for k in range(1, 5):
            skips.append(getattr(self, f"down{k}").maxpool_conv(skips[-1]))
        y = skips.pop()
        for k in range(1, 5):
            up = getattr(self, f"up{k}")
            y = up.conv(torch.cat([skips.pop(), up.up(y)], dim=1))  # skip first, as milesial's Up
        return self.outc.conv(y)


def test_milesial_checkpoint_exports_with_its_preprocessing(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = MilesialUNet(classes=2, width=8).eval()
    _randomise_batchnorm(source)
    path = tmp_path / "checkpoint_epoch5.pth"
    torch.save({**source.state_dict(), "mask_values": [0, 255]}, path)  # as milesial's train.py saves
    out = tmp_path / "artifact"
    code, _, err = run("onnx", "--weights", str(path), "--size", "64x64", "--out", str(out))
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["name"] == "unet"
    assert manifest["model"]["options"] == {"conv_bias": True, "features": [8, 16, 32, 64, 128]}
    assert manifest["model"]["class_names"] == ["mask_value_0", "mask_value_255"]
    prep = manifest["preprocessing"]
    assert (prep["mean"], prep["std"], prep["scale"]) == ([0.0] * 3, [1.0] * 3, 1 / 255)
    assert manifest["source"]["check"]["inverse_mapping"].startswith("exact")

    imported = import_weights(path)
    assert imported is not None
    model = build_imported(imported, imported.options)
    image = torch.rand(2, 3, 64, 80, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(model(image), source(image), atol=1e-5)


def test_milesial_bilinear_unet_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bilinear.pth"
    torch.save(
        {"inc.double_conv.0.weight": torch.zeros(64, 3, 3, 3), "outc.conv.weight": torch.zeros(2, 64, 1, 1)},
        path,
    )
    _refused(tmp_path, path, "a milesial U-Net with bilinear=True")


class VainFDeepLabV3Plus(torch.nn.Module):
    """VainF's deeplabv3plus_resnet50 module tree: torchvision ResNet-50 as `backbone`, and
    `classifier` = DeepLabHeadV3Plus (project, aspp, one 3x3 conv, [low-level, ASPP] order)."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        from segexport.zoo.backbones import ResNet50  # torchvision's module names
        from segexport.zoo.deeplab import ASPP  # VainF's ASPP names: convs.0-4, project

        nn = torch.nn
        self.backbone = ResNet50(output_stride=16)
        self.classifier = nn.Module()
        self.classifier.project = nn.Sequential(
            nn.Conv2d(256, 48, 1, bias=False), nn.BatchNorm2d(48), nn.ReLU()
        )
        self.classifier.aspp = ASPP(2048, 256, (6, 12, 18))
        self.classifier.classifier = nn.Sequential(
            nn.Conv2d(304, 256, 3, padding=1, bias=False),
            nn.BatchNorm2d(256),
            nn.ReLU(),
            nn.Conv2d(256, classes, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low, _, _, out = self.backbone(x)
        head = self.classifier
        aspp = torch.nn.functional.interpolate(
            head.aspp(out), size=low.shape[2:], mode="bilinear", align_corners=False
        )
        y = head.classifier(torch.cat([head.project(low), aspp], dim=1))
        return torch.nn.functional.interpolate(y, size=x.shape[2:], mode="bilinear", align_corners=False)


def test_vainf_checkpoint_loads_exactly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = VainFDeepLabV3Plus(classes=5).eval()
    _randomise_batchnorm(source)
    path = tmp_path / "best_deeplabv3plus_resnet50_voc_os16.pth"
    checkpoint = {
        "cur_itrs": 30000,
        "model_state": source.state_dict(),
        "optimizer_state": {},
        "best_score": 0.77,
    }
    torch.save(checkpoint, path)
    imported = import_weights(path)
    assert imported is not None and imported.model == "deeplabv3plus"
    assert imported.options == {"decoder_convs": 1, "output_stride": 16} and imported.num_classes == 5
    model = build_imported(imported, imported.options)
    assert check_import(imported, model, (64, 64), Tolerance())["inverse_mapping"].startswith("exact")
    image = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(model(image), source(image), atol=1e-5)


def test_vainf_mobilenet_and_smp_deeplab_are_refused(tmp_path: Path) -> None:
    zeros = torch.zeros(1)
    vainf = tmp_path / "vainf_mbv2.pth"
    torch.save({"model_state": {"backbone.low_level_features.0.0.weight": zeros,
                                "classifier.aspp.convs.0.0.weight": zeros,
                                "classifier.project.0.weight": zeros}}, vainf)  # fmt: skip
    _refused(tmp_path, vainf, "VainF's DeepLabV3+ MobileNetV2, which pads its dilated depthwise convs")
    smp = tmp_path / "smp.pth"
    torch.save({"encoder.conv1.weight": zeros, "decoder.aspp.0.convs.0.0.weight": zeros,
                "segmentation_head.0.weight": zeros}, smp)  # fmt: skip
    _refused(tmp_path, smp, "segmentation_models_pytorch DeepLabV3+ with separable ASPP convs")


# --------------------------------------------------------------------------- mmsegmentation


def mmseg_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A zoo SegFormer's weights under mmseg's published names (MixVisionTransformer +
    SegformerHead), converted here by hand, independently of the importer's tables."""
    ours = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, tensor in ours.items():
        parts = key.split(".")
        if parts[0] == "stages":
            i, rest = parts[1], parts[2:]
            if rest[0] == "patch_embed":
                out[f"backbone.layers.{i}.0.{'projection' if rest[1] == 'proj' else 'norm'}.{rest[2]}"] = (
                    tensor
                )
            elif rest[0] == "norm":
                out[f"backbone.layers.{i}.2.{rest[1]}"] = tensor
            else:
                j, module, leaf = rest[1], ".".join(rest[2:-1]), rest[-1]
                block = f"backbone.layers.{i}.1.{j}."
                if module == "attn.q":
                    kv = ours[key.replace("attn.q.", "attn.kv.")]
                    out[block + f"attn.attn.in_proj_{leaf}"] = torch.cat([tensor, kv])
                elif module == "attn.kv":
                    continue
                else:
                    name = {
                        "norm1": "norm1", "norm2": "norm2", "attn.proj": "attn.attn.out_proj",
                        "attn.sr": "attn.sr", "attn.norm": "attn.norm", "mlp.fc1": "ffn.layers.0",
                        "mlp.dwconv": "ffn.layers.1", "mlp.fc2": "ffn.layers.4",
                    }[module]  # fmt: skip
                    is_linear = module in ("mlp.fc1", "mlp.fc2") and leaf == "weight"
                    out[block + f"{name}.{leaf}"] = tensor[:, :, None, None] if is_linear else tensor
        elif key.startswith("decode_head.linear_c."):
            _, _, i, layer, leaf = parts
            out[f"decode_head.convs.{i}.{'conv' if layer == '0' else 'bn'}.{leaf}"] = tensor
        elif key.startswith("decode_head.linear_fuse."):
            layer, leaf = parts[2], parts[3]
            if layer == "0":  # mmseg concatenates stage 1..4, the zoo 4..1
                tensor = torch.cat(list(tensor.chunk(4, dim=1))[::-1], dim=1)
            out[f"decode_head.fusion_conv.{'conv' if layer == '0' else 'bn'}.{leaf}"] = tensor
        else:
            out["decode_head.conv_seg." + parts[-1]] = tensor
    return out


def mmseg_checkpoint(tmp_path: Path, head: str = "SegformerHead") -> tuple[torch.nn.Module, Path]:
    from segexport.zoo import create_model

    torch.manual_seed(0)
    model = create_model("segformer-b0", num_classes=len(CLASSES), layer_norm_eps=1e-6, branch_norm=True)
    _randomise_batchnorm(model)
    config = f"model = dict(decode_head=dict(type='{head}', in_channels=[32, 64, 160, 256]))"
    meta = {"dataset_meta": {"classes": list(CLASSES)}, "mmseg_version": "1.2.2", "cfg": config}
    path = tmp_path / "segformer_mit-b0_8xb2-160k_ade20k-512x512.pth"
    torch.save({"state_dict": mmseg_state(model), "meta": meta}, path)
    return model, path


def test_mmseg_segformer_imports_exactly_with_its_class_names(tmp_path: Path) -> None:
    original, path = mmseg_checkpoint(tmp_path)
    imported = import_weights(path)
    assert imported is not None and imported.model == "segformer-b0"
    assert imported.options == {"layer_norm_eps": 1e-6, "branch_norm": True}
    assert imported.class_names == CLASSES
    expected = original.state_dict()
    assert imported.state_dict.keys() == expected.keys()
    assert all(torch.equal(imported.state_dict[k], expected[k]) for k in expected)
    model = build_imported(imported, imported.options)
    assert check_import(imported, model, (64, 64), Tolerance())["inverse_mapping"].startswith("exact")


@pytest.mark.slow
def test_mmseg_segformer_exports(tmp_path: Path) -> None:
    _, path = mmseg_checkpoint(tmp_path)
    out = tmp_path / "artifact"
    code, _, err = run("onnx", "--weights", str(path), "--size", "64x64", "--out", str(out))
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["class_names"] == list(CLASSES)
    assert manifest["source"]["format"] == "mmseg-segformer"


def test_mmseg_checkpoint_of_another_head_is_refused(tmp_path: Path) -> None:
    _, path = mmseg_checkpoint(tmp_path, head="UPerHead")
    checkpoint = torch.load(path, weights_only=True)
    state = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("decode_head.")}
    state["decode_head.lateral_convs.0.conv.weight"] = torch.zeros(1)
    torch.save({**checkpoint, "state_dict": state}, path)
    _refused(tmp_path, path, "a MiT backbone and UPerHead as decode head; segexport imports")


def test_hf_feature_extractor_config_of_the_hub_models(tmp_path: Path) -> None:
    """The Hub's SegFormers ship an older preprocessor config: one int `size`, no rescale keys."""
    from safetensors.torch import save_file

    from segexport.importers import huggingface
    from segexport.zoo import create_model

    model = create_model("segformer-b0", num_classes=len(CLASSES))
    directory = tmp_path / "hub"
    directory.mkdir()
    hub_names = huggingface.inverse(None, model.state_dict())  # the inverse needs no import record
    save_file({k: v.contiguous() for k, v in hub_names.items()}, str(directory / "model.safetensors"))
    config = {
        "model_type": "segformer",
        "architectures": ["SegformerForSemanticSegmentation"],
        "hidden_sizes": [32, 64, 160, 256],
        "depths": [2, 2, 2, 2],
        "decoder_hidden_size": 256,
        "num_attention_heads": [1, 2, 5, 8],
        "sr_ratios": [8, 4, 2, 1],
        "mlp_ratios": [4, 4, 4, 4],
        "id2label": {str(i): name for i, name in enumerate(CLASSES)},
    }
    (directory / "config.json").write_text(json.dumps(config))
    extractor = {"feature_extractor_type": "SegformerFeatureExtractor", "size": 128, "do_normalize": True,
                 "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}  # fmt: skip
    (directory / "preprocessor_config.json").write_text(json.dumps(extractor))
    imported = import_weights(directory)
    assert imported is not None and imported.size == (128, 128) and imported.class_names == CLASSES
    assert imported.preprocessing is not None and imported.preprocessing.scale == pytest.approx(1 / 255)
    assert all(torch.equal(imported.state_dict[k], v) for k, v in model.state_dict().items())
