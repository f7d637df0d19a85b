"""Weights from elsewhere (Hugging Face, mmseg, timm, popular ports) import exactly, or are refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from segexport.errors import SegexportError
from segexport.importers import build_imported, import_weights
from segexport.importers.check import check_import
from segexport.compare import Tolerance
from tests.source_libraries import source_library
from tests.test_cli import assert_one_line_error, run

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
    code, _, err = run("trt", "--fp16", "--artifacts", str(out))
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


def _refused(tmp_path: Path, weights: Path, message: str) -> None:
    out = tmp_path / "out"
    code, _, err = run("onnx", "--weights", str(weights), "--out", str(out))
    assert_one_line_error(code, err, message)
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
    _refused(tmp_path, directory, "does not fit SegFormer")


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
